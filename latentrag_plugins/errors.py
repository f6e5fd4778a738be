"""Exceptions raised by latentrag_plugins for user-facing mistakes."""

from __future__ import annotations


class LatentRAGError(Exception):
    """Base class for errors caused by bad input, files or configuration (not bugs)."""


class CheckpointError(LatentRAGError):
    """A checkpoint directory is missing a file, or a file in it is corrupt."""


class StoreError(LatentRAGError):
    """A vector store is empty, unreadable, or incompatible with the model's document tower."""


class EncoderMismatchError(StoreError):
    """A store was built with another encoder or dimension than the model's document tower."""

"""Vector stores: the store protocol and the embedded FAISS store."""

from __future__ import annotations

from .base import Encoder, VectorStore, check_compatible

__all__ = ["Encoder", "VectorStore", "check_compatible", "FaissStore"]


def __getattr__(name: str):  # lazy: faiss is optional
    if name == "FaissStore":
        from .faiss_store import FaissStore

        return FaissStore
    raise AttributeError(name)

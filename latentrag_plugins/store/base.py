"""The store protocol that LatentRAG searches, and the encoder protocol that builds a store."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import EncoderMismatchError
from ..results import RetrievedDoc


@runtime_checkable
class Encoder(Protocol):
    """Anything that embeds documents: the model's frozen document tower."""

    encoder_id: str  # canonical id of the encoder, e.g. "sentence-transformers/all-MiniLM-L6-v2"
    dim: int  # embedding dimension

    def embed_documents(
        self, texts: list[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Embed texts as L2-normalised float32 vectors, shape (len(texts), dim)."""
        ...


@runtime_checkable
class VectorStore(Protocol):
    """Anything LatentRAG can search: ``search(embedding, k) -> list[RetrievedDoc]``."""

    def search(self, embedding: np.ndarray, k: int) -> list[RetrievedDoc]:
        """Return the top-``k`` documents for one query embedding of shape (dim,)."""
        ...


@runtime_checkable
class BatchVectorStore(VectorStore, Protocol):
    """A store that also searches many queries in one call (the library uses it when present).

    ``search_batch`` must return what one ``search`` per row would, and should cost less.
    """

    def search_batch(self, embeddings: np.ndarray, k: int) -> list[list[RetrievedDoc]]:
        """Return the top-``k`` documents for each row of ``embeddings`` (B, dim) float32."""
        ...


def check_compatible(store: object, encoder_id: str, dim: int) -> None:
    """Raise if ``store`` declares an encoder id or dimension other than the given ones.

    Stores that declare nothing (no ``encoder_id`` / ``dim`` attributes) are accepted.

    Raises:
        EncoderMismatchError: naming both encoders or both dimensions.
    """
    store_dim = getattr(store, "dim", None)
    store_enc = getattr(store, "encoder_id", None)
    if store_dim is not None and int(store_dim) != int(dim):
        raise EncoderMismatchError(
            f"{type(store).__name__} holds {store_dim}-dim vectors (encoder {store_enc!r}), but the "
            f"model's document tower {encoder_id!r} makes {dim}-dim vectors. Rebuild the index "
            "with this model (`latentrag index ... --model DIR`)."
        )
    if store_enc is not None and not _same_encoder(str(store_enc), encoder_id):
        raise EncoderMismatchError(
            f"{type(store).__name__} was built with encoder {store_enc!r}, but the model's document "
            f"tower is {encoder_id!r}. Rebuild the index with this model's retriever."
        )


def _same_encoder(a: str, b: str) -> bool:
    from ..encoder_identity import same_encoder

    return a == b or same_encoder(a, b)

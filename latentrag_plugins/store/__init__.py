"""Vector stores: the store protocol, the embedded FAISS store and its matrix-product search."""

from __future__ import annotations

from .base import BatchVectorStore, Encoder, VectorStore, check_compatible

__all__ = [
    "BatchVectorStore",
    "Encoder",
    "VectorStore",
    "check_compatible",
    "FaissStore",
    "TorchSearch",
]


def __getattr__(name: str):  # lazy: faiss is optional
    if name == "FaissStore":
        from .faiss_store import FaissStore

        return FaissStore
    if name == "TorchSearch":
        from .torch_search import TorchSearch

        return TorchSearch
    raise AttributeError(name)

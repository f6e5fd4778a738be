"""Searching any LangChain ``VectorStore`` by vector, and checking it matches the model.

A :class:`StoreSearcher` picks, once, how to search a store:

- sync: ``similarity_search_with_score_by_vector`` where the store has it (raw scores), else
  ``similarity_search_by_vector_with_relevance_scores`` (Chroma's scored search), else
  ``similarity_search_by_vector`` (no scores);
- async: the store's own ``asimilarity_search_with_score_by_vector``, else its own (overridden)
  ``asimilarity_search_by_vector``; only a store with neither (Chroma, Qdrant) runs the sync
  search in a worker thread (never ``VectorStore``'s executor fallback, which would also drop
  the scores).

Scores are the store's raw scores: a similarity (higher is better) for ``InMemoryVectorStore``
and Qdrant with cosine distance, an L2 distance (lower is better) for the community FAISS store
with its default ``EUCLIDEAN_DISTANCE`` strategy, and the collection's distance (lower is
better, despite the method's name) for Chroma: squared L2 by default, ``1 - cos`` for a cosine
collection, ``1 - dot`` for an inner-product one.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from ..encoder_identity import loaded_from, same_encoder
from ..errors import EncoderMismatchError, StoreError
from .events import Hit

if TYPE_CHECKING:
    from ..model import LatentRAG

_SYNC_SCORED, _SYNC = "similarity_search_with_score_by_vector", "similarity_search_by_vector"
_SYNC_RELEVANCE = "similarity_search_by_vector_with_relevance_scores"  # Chroma: distances
_ASYNC_SCORED, _ASYNC = "a" + _SYNC_SCORED, "a" + _SYNC
_SCORED = {_SYNC_SCORED, _SYNC_RELEVANCE, _ASYNC_SCORED}
_CHROMA_MODULES = ("langchain_chroma.", "langchain_community.vectorstores.chroma")


def _own(store: Any, name: str) -> bool:
    """True if ``store`` has method ``name`` beyond ``VectorStore``'s raising/executor default."""
    fn = getattr(type(store), name, None)
    return callable(fn) and fn is not getattr(VectorStore, name, None)


class StoreSearcher:
    """Searches one vector store by vector, sync or async, with raw scores where it has them.

    Args:
        store: The LangChain vector store.
        search_kwargs: Extra keyword arguments for every search (e.g. ``filter``).

    Raises:
        StoreError: The store cannot search by vector (names the store class).
    """

    def __init__(self, store: Any, search_kwargs: dict[str, Any] | None = None) -> None:
        self.store, self.kwargs = store, dict(search_kwargs or {})
        if "k" in self.kwargs:
            raise ValueError(
                "search_kwargs must not set 'k': LatentRAG sets the documents of each latent "
                "step with top_k (and the retriever's total with k)"
            )
        self.name = type(store).__name__
        sync = (_SYNC_SCORED, _SYNC_RELEVANCE, _SYNC)
        self.sync = next((m for m in sync if _own(store, m)), None)
        self.native_async = next((m for m in (_ASYNC_SCORED, _ASYNC) if _own(store, m)), None)
        if self.sync is None and self.native_async is None:
            raise StoreError(
                f"{self.name} cannot search by vector: it implements none of {_SYNC_SCORED}, "
                f"{_SYNC_RELEVANCE} and {_SYNC}, which LatentRAG needs to search with its latent "
                "query embeddings. "
                "Use a vector store that supports search by vector."
            )

    def search(self, embedding: list[float], k: int, step: int) -> list[Hit]:
        """Search with the store's sync by-vector method; errors name the store and step."""
        if self.sync is None:
            raise StoreError(f"{self.name} has only async search by vector: use ainvoke/abatch")
        try:
            out = getattr(self.store, self.sync)(embedding, k=k, **self.kwargs)
        except Exception as exc:
            raise self._failed(self.sync, step, exc) from exc
        return self._hits(out, self.sync, k)

    async def asearch(self, embedding: list[float], k: int, step: int) -> list[Hit]:
        """Search with the store's native async method (a worker thread only if it has none)."""
        if self.native_async is None:
            return await asyncio.to_thread(self.search, embedding, k, step)
        try:
            out = await getattr(self.store, self.native_async)(embedding, k=k, **self.kwargs)
        except Exception as exc:
            raise self._failed(self.native_async, step, exc) from exc
        return self._hits(out, self.native_async, k)

    def _failed(self, method: str, step: int, exc: Exception) -> StoreError:
        return StoreError(
            f"{self.name}.{method} failed at latent step {step}: {type(exc).__name__}: {exc}"
        )

    def _hits(self, out: Any, method: str, k: int) -> list[Hit]:
        """Normalise a search result to ``[(Document, float | None)]`` (scores as floats)."""
        hits: list[Hit] = []
        scored = method in _SCORED
        for item in list(out)[:k]:
            doc, score = item if scored and isinstance(item, tuple) else (item, None)
            if not hasattr(doc, "page_content") or (scored and not isinstance(item, tuple)):
                raise StoreError(
                    f"{self.name}.{method} returned {type(item).__name__} items, not "
                    + ("(Document, score) pairs" if scored else "Documents")
                )
            if score is not None:
                score = float(score)
                score = None if math.isnan(score) else score
            hits.append((doc, score))
        return hits


def store_embeddings(store: Any) -> Embeddings | None:
    """The ``Embeddings`` a store was built with, where it says (``embeddings``/``embedding``)."""
    for attr in ("embeddings", "embedding", "embedding_function"):
        try:
            value = getattr(store, attr, None)
        except Exception:  # some stores raise from the property when unset
            value = None
        if isinstance(value, Embeddings):
            return value
    return None


def probe_dim(store: Any) -> int | None:
    """Dimension of the vectors in a store, read from its index; None when it can't tell.

    Knows a FAISS index (``index.d``), ``InMemoryVectorStore`` (a stored vector), Chroma (a
    stored vector) and Qdrant (the collection's vector size); any store with an int ``dim``
    attribute works too.
    """
    d = getattr(getattr(store, "index", None), "d", None) or getattr(store, "dim", None)
    if isinstance(d, int) and d > 0:
        return d
    vectors = getattr(store, "store", None)
    if isinstance(vectors, dict) and vectors:
        first = next(iter(vectors.values()))
        if isinstance(first, dict) and first.get("vector") is not None:
            return len(first["vector"])
    if type(store).__module__.startswith(_CHROMA_MODULES):
        return _chroma_dim(store)
    name = getattr(store, "collection_name", None)
    if isinstance(name, str) and hasattr(getattr(store, "client", None), "get_collection"):
        try:
            params = store.client.get_collection(name).config.params.vectors
        except Exception:  # best effort: the search itself reports a missing collection
            return None
        if isinstance(params, dict):
            params = params.get(getattr(store, "vector_name", ""))
        size = getattr(params, "size", None)
        return int(size) if size else None
    return None


def _chroma_dim(store: Any) -> int | None:
    """The length of a stored vector of a Chroma store; None while it is empty."""
    try:
        vectors = store.get(limit=1, include=["embeddings"]).get("embeddings")
    except Exception:  # best effort: the search itself reports a broken collection
        return None
    return len(vectors[0]) if vectors is not None and len(vectors) else None


def _declared_model(emb: Embeddings) -> str | None:
    """The model name another Embeddings class declares (``model_name``, ``model``, ...)."""
    for attr in ("model_name", "model", "model_id"):
        value = getattr(emb, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def check_store(store: Any, model: LatentRAG) -> bool:
    """Raise if ``store``'s vectors don't come from ``model``'s document tower.

    The store's ``Embeddings`` (or the ones a wrapper such as ``CacheBackedEmbeddings`` wraps)
    must be :class:`LatentRAGEmbeddings` over the same encoder, or another class whose
    ``model_name`` names it (:func:`~latentrag_plugins.encoder_identity.same_encoder`: the same
    id, or the same weights, e.g. the folder the tower was loaded from), and its vectors must
    have the tower's dimension.

    Returns:
        True if the vector dimension could be checked (False: check again later, e.g. when an
        empty ``InMemoryVectorStore`` has vectors).

    Raises:
        EncoderMismatchError: naming both encoders or both dimensions.
    """
    from .embeddings import LatentRAGEmbeddings

    name, want = type(store).__name__, f"{model.encoder_id!r} ({model.dim}-dim)"
    emb = store_embeddings(store)
    while isinstance(getattr(emb, "underlying_embeddings", None), Embeddings):
        emb = emb.underlying_embeddings  # a wrapper such as CacheBackedEmbeddings
    model_dir = loaded_from(model)
    if isinstance(emb, LatentRAGEmbeddings):
        same = same_encoder(
            emb.encoder_id, model.encoder_id, a_dir=loaded_from(emb.model), b_dir=model_dir
        )
        if not same or emb.dim != model.dim:
            raise EncoderMismatchError(
                f"{name} was built with LatentRAGEmbeddings over {emb.encoder_id!r} "
                f"({emb.dim}-dim), but the model's document tower is {want}. Rebuild the "
                "store with LatentRAGEmbeddings(model=<this model>)."
            )
    elif emb is not None:
        declared = _declared_model(emb)
        if declared is None or not same_encoder(declared, model.encoder_id, b_dir=model_dir):
            raise EncoderMismatchError(
                f"{name} was built with {type(emb).__name__} (model {declared!r}), but the "
                f"model's document tower is {want}: LatentRAG's latent queries only match "
                "vectors from its own tower. Rebuild the store with LatentRAGEmbeddings(model=...)."
            )
    dim = probe_dim(store)
    if dim is not None and dim != model.dim:
        raise EncoderMismatchError(
            f"{name} holds {dim}-dim vectors, but the model's document tower {want} makes "
            f"{model.dim}-dim vectors. Rebuild the store with LatentRAGEmbeddings(model=...)."
        )
    return dim is not None

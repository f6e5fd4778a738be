"""``LatentRAGEmbedding``: a LatentRAG model's embeddings as a LlamaIndex ``BaseEmbedding``.

Texts (documents) always get the frozen document tower. Build (or rebuild) a
``VectorStoreIndex`` with it, so that LatentRAG's latent query embeddings and the index's document
vectors live in the same space::

    index = VectorStoreIndex.from_documents(docs, embed_model=LatentRAGEmbedding(model=model))

With ``latent_queries=True`` queries get one latent step instead (the embedding LatentRAG
searches with at its first step), so the index's own retrievers and query engines retrieve with
latent reasoning, with no agent::

    embed = LatentRAGEmbedding(model=model, latent_queries=True)
    index = VectorStoreIndex.from_vector_store(vector_store, embed_model=embed)
    index.as_retriever(similarity_top_k=3).retrieve("Where was the founder of X born?")
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from ..live import is_service_url, resolve_model

if TYPE_CHECKING:
    from ..encoder import EncoderTower
    from ..model import LatentRAG


def document_tower(model: Any) -> EncoderTower:
    """The document tower of a LatentRAG model, a checkpoint path, or an ``EncoderTower``.

    A path loads only the tower (no LLM), so indexing stays cheap.
    """
    if is_service_url(model):
        resolve_model(model, service=False)  # raises: a service does not embed
    if isinstance(model, (str, os.PathLike)):
        from ..checkpoint_files import load_document_tower

        return load_document_tower(model)
    tower = getattr(model, "doc_tower", model)
    if not hasattr(tower, "embed_texts") or not hasattr(tower, "encoder_id"):
        raise TypeError(
            f"model must be a LatentRAG, a checkpoint path or an EncoderTower, got "
            f"{type(model).__name__}"
        )
    return tower


def _latent_model(model: Any) -> LatentRAG:
    """The whole LatentRAG model that latent queries need (a model, or a checkpoint path)."""
    from ..model import LatentRAG

    if not isinstance(model, (LatentRAG, str, os.PathLike)):
        raise TypeError(
            "latent_queries=True needs a LatentRAG model or a checkpoint directory, not "
            f"{type(model).__name__}"
        )
    return resolve_model(model, service=False)


class LatentRAGEmbedding(BaseEmbedding):
    """A LatentRAG model's embeddings, in the space of its frozen document tower (sync and async,
    batched).

    Texts are embedded exactly as LatentRAG's own stores embed documents, so an index built with
    it is searchable by the model's latent subqueries. Queries get the same tower on the query
    text (with the encoder's query instruction, if it has one), or, with ``latent_queries``, the
    model's first latent step (:meth:`LatentRAG.embed_query` with ``latent=True``). An index built
    with the document tower (this class, or the same encoder through ``HuggingFaceEmbedding``)
    serves both.

    Args:
        model: A :class:`~latentrag_plugins.LatentRAG`, a checkpoint directory (only the document
            tower is loaded, unless ``latent_queries``) or an ``EncoderTower``.
        latent_queries: Embed queries with one latent step (needs the whole model: a
            ``LatentRAG`` or a checkpoint directory).
        embed_batch_size: Texts per forward pass of the tower (default 64).
        **kwargs: Other ``BaseEmbedding`` fields (``callback_manager``, ``num_workers``, ...).

    Attributes:
        model_name: The encoder id (e.g. ``"sentence-transformers/all-MiniLM-L6-v2"``); the
            LatentRAG adapters compare it with the model's document tower.
        latent_queries: Whether queries are embedded with one latent step.
    """

    model_name: str = Field(default="unknown", description="Id of the document tower's encoder.")
    latent_queries: bool = Field(
        default=False, description="Embed queries with one latent step (else the document tower)."
    )
    _tower: Any = PrivateAttr()
    _model: Any = PrivateAttr(default=None)

    def __init__(
        self,
        model: LatentRAG | str | os.PathLike[str] | Any,
        *,
        latent_queries: bool = False,
        **kwargs: Any,
    ) -> None:
        full = _latent_model(model) if latent_queries else None
        tower = document_tower(full if full is not None else model)
        kwargs.setdefault("model_name", tower.encoder_id)
        kwargs.setdefault("embed_batch_size", 64)
        super().__init__(latent_queries=latent_queries, **kwargs)
        self._tower = tower
        self._model = full

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "LatentRAGEmbedding"

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self._tower.dim)

    def _embed(self, texts: list[str], is_query: bool) -> list[Embedding]:
        vectors = self._tower.embed_texts(
            list(texts), is_query=is_query, batch_size=self.embed_batch_size
        )  # (len(texts), dim)
        return vectors.tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        """Embed one query: one latent step with ``latent_queries``, else the document tower
        (with the encoder's query instruction, if it has one)."""
        if self._model is not None:
            return self._model.embed_query(query, latent=True).tolist()
        return self._embed([query], is_query=True)[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        """Embed one query in a worker thread."""
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        """Embed one document."""
        return self._embed([text], is_query=False)[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        """Embed one document in a worker thread."""
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        """Embed documents in batches of ``embed_batch_size``."""
        return self._embed(texts, is_query=False)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        """Embed documents in a worker thread."""
        return await asyncio.to_thread(self._get_text_embeddings, texts)

"""``LatentRAGEmbedding``: the model's frozen document tower as a LlamaIndex ``BaseEmbedding``.

Build (or rebuild) a ``VectorStoreIndex`` with it, so that LatentRAG's latent query embeddings
and the index's document vectors live in the same space::

    index = VectorStoreIndex.from_documents(docs, embed_model=LatentRAGEmbedding(model=model))
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

if TYPE_CHECKING:
    from ..encoder import EncoderTower
    from ..model import LatentRAG


def document_tower(model: Any) -> EncoderTower:
    """The document tower of a LatentRAG model, a checkpoint path, or an ``EncoderTower``.

    A path loads only the tower (no LLM), so indexing stays cheap.
    """
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


class LatentRAGEmbedding(BaseEmbedding):
    """The frozen document tower of a LatentRAG model (sync and async, batched).

    Documents and natural-language queries are embedded exactly as LatentRAG's own stores do, so an
    index built with it is searchable by the model's latent subqueries.

    Args:
        model: A :class:`~latentrag_plugins.LatentRAG`, a checkpoint directory (only the document
            tower is loaded) or an ``EncoderTower``.
        embed_batch_size: Texts per forward pass of the tower (default 64).
        **kwargs: Other ``BaseEmbedding`` fields (``callback_manager``, ``num_workers``, ...).

    Attributes:
        model_name: The encoder id (e.g. ``"sentence-transformers/all-MiniLM-L6-v2"``); the
            LatentRAG adapters compare it with the model's document tower.
    """

    model_name: str = Field(default="unknown", description="Id of the document tower's encoder.")
    _tower: Any = PrivateAttr()

    def __init__(self, model: LatentRAG | str | os.PathLike[str] | Any, **kwargs: Any) -> None:
        tower = document_tower(model)
        kwargs.setdefault("model_name", tower.encoder_id)
        kwargs.setdefault("embed_batch_size", 64)
        super().__init__(**kwargs)
        self._tower = tower

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
        """Embed one query (with the encoder's query instruction, if it has one)."""
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

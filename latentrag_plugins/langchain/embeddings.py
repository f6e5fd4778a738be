"""``LatentRAGEmbeddings``: a LatentRAG model's embeddings as LangChain ``Embeddings``.

Documents always get the frozen document tower. Build the vector store that
:class:`~latentrag_plugins.langchain.LatentRAGRetriever` searches with it, so the stored vectors
and LatentRAG's latent query embeddings share one space::

    emb = LatentRAGEmbeddings(model=model)
    store = InMemoryVectorStore.from_documents(docs, emb)

With ``latent_queries=True`` queries get one latent step instead (the embedding LatentRAG
searches with at its first step), so every retriever built on the store (similarity search, MMR,
multi-query, ensemble, ...) retrieves with latent reasoning, with no agent::

    emb = LatentRAGEmbeddings(model=model, latent_queries=True)  # documents: the same tower
    store = InMemoryVectorStore.from_documents(docs, emb)
    store.as_retriever(search_type="mmr").invoke("Where was the founder of X born?")
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..live import resolve_model
from ..model import LatentRAG


class LatentRAGEmbeddings(BaseModel, Embeddings):
    """A LatentRAG model's embeddings: L2-normalised vectors of ``dim`` floats, in the space of
    its frozen document tower.

    ``embed_documents`` is the document tower. ``embed_query`` is the same tower on the query
    text (with the encoder's query instruction, if it has one), or, with ``latent_queries``, the
    model's first latent step (:meth:`LatentRAG.embed_query` with ``latent=True``). A store built
    with the document tower (this class, or the same encoder through sentence-transformers or
    Hugging Face embeddings) serves both. The async variants run in a worker thread
    (``asyncio.to_thread``): the work is local compute, so this keeps the event loop free.

    Attributes:
        model: The LatentRAG model, or a checkpoint directory (loaded with
            ``LatentRAG.from_pretrained``).
        batch_size: Texts per forward pass of the tower (and of the LLM, for latent queries).
        latent_queries: Embed queries with one latent step instead of the document tower.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: LatentRAG = Field(repr=False, description="LatentRAG model or checkpoint path.")
    batch_size: int = Field(default=64, ge=1, description="Texts per forward pass.")
    latent_queries: bool = Field(
        default=False, description="Embed queries with one latent step (else the document tower)."
    )

    @field_validator("model", mode="before")
    @classmethod
    def _load_model(cls, value: Any) -> LatentRAG:
        return resolve_model(value, service=False)

    @property
    def encoder_id(self) -> str:
        """Id of the document tower's encoder (what compatibility checks compare)."""
        return self.model.encoder_id

    @property
    def model_name(self) -> str:
        """Same as :attr:`encoder_id`, under the name other LangChain embeddings use."""
        return self.encoder_id

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.model.dim

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents with the document tower -> one ``dim``-long list of floats per text."""
        if not texts:
            return []
        return self.model.embed_documents(list(texts), batch_size=self.batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed a query -> ``dim`` floats (one latent step with ``latent_queries``).

        Raises:
            TypeError: ``text`` is not a string.
            ValueError: With ``latent_queries``, an empty query or one too long for the model.
        """
        return self.model.embed_query(text, latent=self.latent_queries).tolist()

    def embed_queries(self, texts: list[str]) -> list[list[float]]:
        """Embed many queries at once, ``batch_size`` per forward pass (as :meth:`embed_query`)."""
        vectors = self.model.embed_queries(
            texts, latent=self.latent_queries, batch_size=self.batch_size
        )  # (len(texts), dim)
        return vectors.tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents` (runs in a worker thread)."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query` (runs in a worker thread)."""
        return await asyncio.to_thread(self.embed_query, text)

    async def aembed_queries(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_queries` (runs in a worker thread)."""
        return await asyncio.to_thread(self.embed_queries, texts)

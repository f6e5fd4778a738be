"""``LatentRAGEmbeddings``: the model's frozen document tower as LangChain ``Embeddings``.

Build the vector store that :class:`~latentrag_plugins.langchain.LatentRAGRetriever` searches
with it, so the stored vectors and LatentRAG's latent query embeddings share one space::

    emb = LatentRAGEmbeddings(model=model)
    store = InMemoryVectorStore.from_documents(docs, emb)
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..live import resolve_model
from ..model import LatentRAG


class LatentRAGEmbeddings(BaseModel, Embeddings):
    """The document tower of a LatentRAG model: L2-normalised vectors of ``dim`` floats.

    ``embed_query`` embeds a natural-language query with the same tower (adding the encoder's
    query instruction, if it has one), for ordinary similarity search over the same store.
    The async variants run the tower in a worker thread (``asyncio.to_thread``): the work is
    local compute, so this keeps the event loop free.

    Attributes:
        model: The LatentRAG model, or a checkpoint directory (loaded with
            ``LatentRAG.from_pretrained``).
        batch_size: Texts per forward pass of the tower.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: LatentRAG = Field(repr=False, description="LatentRAG model or checkpoint path.")
    batch_size: int = Field(default=64, ge=1, description="Texts per forward pass.")

    @field_validator("model", mode="before")
    @classmethod
    def _load_model(cls, value: Any) -> LatentRAG:
        return resolve_model(value)

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
        """Embed documents -> one ``dim``-long list of floats per text."""
        if not texts:
            return []
        return self.model.embed_documents(list(texts), batch_size=self.batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed a natural-language query -> ``dim`` floats."""
        return self.model.embed_query(text).tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents` (runs in a worker thread)."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query` (runs in a worker thread)."""
        return await asyncio.to_thread(self.embed_query, text)

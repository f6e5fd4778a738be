"""LangChain integration: LatentRAG as a retriever, a chain and embeddings over any vector store.

Install with ``pip install "latentrag-plugins[langchain]"``. ``import latentrag_plugins`` never
imports LangChain; importing this package without ``langchain-core`` raises an ImportError that
names the extra.

- :class:`LatentRAGEmbeddings`: the model's frozen document tower; build the store with it.
- :class:`LatentRAGRetriever`: a ``BaseRetriever`` that searches the store by vector, once per
  latent step.
- :class:`LatentRAGChain`: a Runnable, question -> answer, source documents, steps, timings.
- Custom callback events ``latentrag_step``, ``latentrag_thought`` and ``latentrag_token``
  (:mod:`latentrag_plugins.langchain.events`).

See ``docs/langchain.md``.
"""

from __future__ import annotations

from ..extras import require

require("langchain_core", "langchain", "latentrag_plugins.langchain")

from .chain import LatentRAGChain, LatentRAGChainInput  # noqa: E402
from .embeddings import LatentRAGEmbeddings  # noqa: E402
from .events import STEP_EVENT, THOUGHT_EVENT, TOKEN_EVENT  # noqa: E402
from .retriever import LatentRAGRetriever  # noqa: E402

__all__ = [
    "STEP_EVENT",
    "THOUGHT_EVENT",
    "TOKEN_EVENT",
    "LatentRAGChain",
    "LatentRAGChainInput",
    "LatentRAGEmbeddings",
    "LatentRAGRetriever",
]

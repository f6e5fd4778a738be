"""LlamaIndex adapters: LatentRAG over any ``VectorStoreIndex`` (extra ``[llama-index]``).

- :class:`LatentRAGEmbedding` (``BaseEmbedding``): the frozen document tower; build indexes with it.
- :class:`LatentRAGRetriever` (``BaseRetriever``): the latent steps' nodes.
- :class:`LatentRAGQueryEngine` (``BaseQueryEngine``): the answer, streaming optional; ``as_tool``
  for agents.
- :class:`LatentStepEvent`, :class:`LatentThoughtEvent`: instrumentation events from the
  ``latentrag_plugins`` dispatcher subtree.
- :func:`persist_index` / :func:`load_index`: persisted indexes with an encoder manifest.

See ``docs/llama_index.md``.
"""

from __future__ import annotations

from ..extras import require

require("llama_index.core", "llama-index", "the LlamaIndex adapters")

# events registers the dispatchers top-down; import it before the classes that use them.
from .embedding import LatentRAGEmbedding  # noqa: E402
from .events import (  # noqa: E402
    LatentStepEvent,
    LatentStepStreamEvent,
    LatentThoughtEvent,
    LatentThoughtStreamEvent,
    stream_events_to,
)
from .manifest import check_index, load_index, persist_index  # noqa: E402
from .query_engine import LatentRAGQueryEngine  # noqa: E402
from .retriever import LatentRAGRetriever  # noqa: E402

__all__ = [
    "LatentRAGEmbedding",
    "LatentRAGQueryEngine",
    "LatentRAGRetriever",
    "LatentStepEvent",
    "LatentStepStreamEvent",
    "LatentThoughtEvent",
    "LatentThoughtStreamEvent",
    "check_index",
    "load_index",
    "persist_index",
    "stream_events_to",
]

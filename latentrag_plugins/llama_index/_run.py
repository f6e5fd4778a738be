"""One question's trip through the engine, seen from LlamaIndex: the index's nodes and events.

:class:`IndexSearch` decides once how to search an index (its own vector retriever, sync or
async); a :class:`Run` is one question's search function, collects the nodes it found (with
``latentrag_*`` metadata) and emits the engine's events as instrumentation events.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from llama_index.core.instrumentation import Dispatcher
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from ..engine import EndRequest, Event, SearchQuery, StepEvent, ThoughtEvent
from ..errors import StoreError
from ..live import resolve_model
from ..results import RetrievedDoc, titled
from .events import LatentStepEvent, LatentThoughtEvent, emit
from .manifest import check_index

log = logging.getLogger(__name__)

STEP_KEY, RANK_KEY, SUBQUERY_KEY = "latentrag_step", "latentrag_rank", "latentrag_subquery"

# index.as_retriever arguments the adapters set themselves, and why
_OWN_RETRIEVER_ARGS = {
    "similarity_top_k": "the documents per latent step are top_k (the retriever's own "
    "similarity_top_k cuts the union of all steps)",
    "callback_manager": "the index passes its own; set it on the index",
    "node_ids": "the index passes its own",
    "object_map": "the index passes its own",
}


def to_doc(nws: NodeWithScore) -> RetrievedDoc:
    """A LlamaIndex node as the model's document (a ``title`` metadata field leads the text)."""
    node = nws.node
    text = titled(node.get_content(metadata_mode=MetadataMode.NONE), node.metadata.get("title"))
    score = float(nws.score) if nws.score is not None else math.nan  # "no score", not 0
    return RetrievedDoc(id=node.node_id, text=text, score=score, metadata=dict(node.metadata))


def annotate(nws: NodeWithScore, step: int, rank: int, subquery: str | None) -> NodeWithScore:
    """A copy of a retrieved node with ``latentrag_step`` / ``latentrag_rank`` (and the decoded
    ``latentrag_subquery``) metadata, kept out of LLM and embedding text."""
    node = nws.node.model_copy()
    extra: dict[str, Any] = {STEP_KEY: step, RANK_KEY: rank}
    if subquery is not None:
        extra[SUBQUERY_KEY] = subquery
    node.metadata = {**node.metadata, **extra}
    for attr in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
        setattr(node, attr, list(dict.fromkeys([*getattr(node, attr), *extra])))
    return NodeWithScore(node=node, score=nws.score)


def _async_unavailable(exc: BaseException) -> bool:
    """Whether a store's async search failed for want of async support (e.g. a Qdrant store
    made with only a sync client: "Async client is not initialized!")."""
    text = str(exc).lower()
    return isinstance(exc, NotImplementedError) or (
        "async" in text and any(w in text for w in ("not initialized", "not supported", "no "))
    )


class IndexSearch:
    """Searches a ``VectorStoreIndex`` by vector through its own retriever, ``top_k`` nodes per
    latent step. The async search falls back to the sync one in a worker thread when the store
    has no working async API.

    Args:
        model: A :class:`~latentrag_plugins.LatentRAG` or a checkpoint path.
        index: A ``VectorStoreIndex`` built with the model's document tower (checked).
        top_k: Nodes per latent step (default: the model's ``config.top_k``).
        max_steps: Most retrieval steps, at least 1 (default: ``config.max_steps``, at least 1).
        retriever_kwargs: Extra ``index.as_retriever`` arguments (``filters``, ...).
    """

    def __init__(
        self,
        model: Any,
        index: Any,
        *,
        top_k: int | None = None,
        max_steps: int | None = None,
        retriever_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.model = resolve_model(model)
        cfg = self.model.config
        self.top_k = cfg.top_k if top_k is None else int(top_k)
        self.max_steps = max(1, cfg.max_steps) if max_steps is None else int(max_steps)
        if self.top_k < 1 or self.max_steps < 1:
            raise ValueError(
                "top_k and max_steps must be >= 1 (the adapters retrieve at least once)"
            )
        if not hasattr(index, "as_retriever"):
            raise TypeError(f"index must be a VectorStoreIndex, got {type(index).__name__}")
        check_index(index, self.model)
        extra = dict(retriever_kwargs or {})
        for key, why in _OWN_RETRIEVER_ARGS.items():
            if key in extra:
                raise ValueError(f"retriever_kwargs may not set {key}: {why}")
        self.index = index
        self.vector_retriever = index.as_retriever(similarity_top_k=self.top_k, **extra)
        self.store_name = type(getattr(index, "vector_store", None)).__name__
        self._native_async = True

    def search(self, bundle: QueryBundle, step: int) -> list[NodeWithScore]:
        """Search with the store's sync API; errors name the store and the step."""
        try:
            return self.vector_retriever.retrieve(bundle)
        except Exception as exc:
            raise self._error(step, exc) from exc

    async def asearch(self, bundle: QueryBundle, step: int) -> list[NodeWithScore]:
        """Search with the store's async API (its sync one in a worker thread, if it has none)."""
        if self._native_async:
            try:
                return await self.vector_retriever.aretrieve(bundle)
            except Exception as exc:
                if not _async_unavailable(exc):
                    raise self._error(step, exc) from exc
                log.warning(
                    "%s has no working async search (%s): searching it with its sync API in a "
                    "worker thread",
                    self.store_name,
                    exc,
                )
                self._native_async = False
        return await asyncio.to_thread(self.search, bundle, step)

    def _error(self, step: int, exc: Exception) -> StoreError:
        return StoreError(
            f"{self.store_name} search failed at latent step {step} (top_k={self.top_k}, "
            f"{self.model.dim}-dim query from {self.model.encoder_id!r}): "
            f"{type(exc).__name__}: {exc}"
        )


def as_node(doc: RetrievedDoc) -> NodeWithScore:
    """A service's document as a node."""
    node = TextNode(id_=doc.id, text=doc.text, metadata=dict(doc.metadata))
    return NodeWithScore(node=node, score=None if math.isnan(doc.score) else doc.score)


class Run:
    """One question's search function, the nodes it found and its events.

    Args:
        searcher: How to search the index (None with a LatentRAG service, which searches its
            own store: the nodes then come from its step events).
        question: The question.
        dispatcher: Where its instrumentation events go (inside the caller's span).
    """

    def __init__(self, searcher: IndexSearch | None, question: str, dispatcher: Dispatcher) -> None:
        self.searcher, self.question, self.dispatcher = searcher, question, dispatcher
        self.nodes: list[NodeWithScore] = []  # every step's nodes, de-duplicated, annotated
        self.hits: dict[int, list[NodeWithScore]] = {}
        self.subqueries: dict[int, str | None] = {}  # decoded, from a service's thought events
        self.empty = False  # the first search found nothing: the index is empty

    def _bundle(self, query: SearchQuery) -> QueryBundle:
        text = query.subquery or self.question
        return QueryBundle(query_str=text, embedding=query.embedding.tolist())

    def search(self, query: SearchQuery) -> list[RetrievedDoc]:
        """Search the index (sync)."""
        assert self.searcher is not None
        return self._found(query, self.searcher.search(self._bundle(query), query.step))

    async def asearch(self, query: SearchQuery) -> list[RetrievedDoc]:
        """Search the index (async)."""
        assert self.searcher is not None
        return self._found(query, await self.searcher.asearch(self._bundle(query), query.step))

    def _found(self, query: SearchQuery, found: list[NodeWithScore]) -> list[RetrievedDoc]:
        if query.step == 0 and not found:
            self.hits[query.step] = found
            self.empty = True
            raise EndRequest  # an empty index: nothing more to read
        self._keep(query.step, found, query.subquery)
        return [to_doc(n) for n in found]

    def _keep(self, step: int, found: list[NodeWithScore], subquery: str | None) -> None:
        """Record a step's nodes; add the new ones, annotated, to :attr:`nodes`."""
        self.hits[step] = found
        seen = {n.node.node_id for n in self.nodes}
        for rank, nws in enumerate(found):
            if nws.node.node_id not in seen:
                seen.add(nws.node.node_id)
                self.nodes.append(annotate(nws, step, rank, subquery))

    def emit(self, event: Event) -> None:
        """Emit an engine event as a LlamaIndex instrumentation event (answer tokens aside)."""
        if isinstance(event, ThoughtEvent):
            self.subqueries[event.step] = event.subquery
            emit(
                self.dispatcher,
                LatentThoughtEvent(
                    question=self.question,
                    step=event.step,
                    thought=event.thought,
                    subquery=event.subquery,
                ),
            )
        elif isinstance(event, StepEvent):
            if self.searcher is None and event.action == "retrieve":  # a service searched
                self._keep(
                    event.step, [as_node(d) for d in event.docs], self.subqueries.get(event.step)
                )
            found = self.hits.get(event.step, [])
            emit(
                self.dispatcher,
                LatentStepEvent(
                    question=self.question,
                    step=event.step,
                    action=event.action,
                    forced=event.forced,
                    node_ids=[n.node.node_id for n in found],
                    scores=[n.score for n in found],
                ),
            )

"""One question's trip through the engine, seen from LangChain: its store's hits and its events.

A :class:`Run` is the request's search function (sync or async, through
:class:`~._store_adapter.StoreSearcher`, keeping the store's documents and raw scores per step)
and turns the engine's events into LangChain custom events for the run's callbacks. With a
LatentRAG service, which searches its own store, the hits come from the step events.
"""

from __future__ import annotations

import math
from typing import Any

from langchain_core.documents import Document
from langchain_core.runnables import RunnableConfig

from ..engine import Event, SearchQuery, StepEvent, ThoughtEvent, TokenEvent
from ..live import is_remote
from ..results import LatentRAGResult, RetrievedDoc, titled
from ._store_adapter import StoreSearcher, check_store
from .events import (
    STEP_EVENT,
    THOUGHT_EVENT,
    TOKEN_EVENT,
    Hit,
    adispatch,
    dispatch,
    document_id,
    step_data,
)


def as_retrieved(hits: list[Hit]) -> list[RetrievedDoc]:
    """Store hits as the model's documents (a ``title`` metadata field leads the text)."""
    return [
        RetrievedDoc(
            id=document_id(d) or "",
            text=titled(d.page_content, d.metadata.get("title")),
            score=math.nan if s is None else s,
            metadata={str(k): v for k, v in d.metadata.items()},  # LangChain allows any keys
        )
        for d, s in hits
    ]


def as_hits(docs: list[RetrievedDoc]) -> list[Hit]:
    """A service's documents as store hits (LangChain documents and raw scores)."""
    return [
        (
            Document(page_content=d.text, metadata=dict(d.metadata), id=d.id or None),
            None if math.isnan(d.score) else d.score,
        )
        for d in docs
    ]


def check_target(model: Any, vectorstore: Any, search_kwargs: dict[str, Any]) -> bool:
    """Check what a component runs on: a model over a vector store built with its document
    tower, or a LatentRAG service (which searches its own store).

    Returns:
        Whether the store's vector dimension could be checked (a service: yes).

    Raises:
        ValueError: A service with a vector store, or a model without one.
        EncoderMismatchError, StoreError: The store does not fit the model.
    """
    if is_remote(model):
        if vectorstore is not None:
            raise ValueError(
                "a LatentRAG service searches its own store: leave vectorstore out (or pass a "
                "model instead of the service's URL to search this one)"
            )
        return True
    if vectorstore is None:
        raise ValueError(
            "pass vectorstore=... (a store built with the model's document tower), or a "
            "LatentRAG service's URL as model"
        )
    StoreSearcher(vectorstore, search_kwargs)  # raises if it cannot search
    return check_store(vectorstore, model)


class Run:
    """The search function and the event relay of one question.

    Args:
        searcher: Searches the vector store (None with a service).
        config: The LangChain run's config (its callbacks get the events).
    """

    def __init__(self, searcher: StoreSearcher | None, config: RunnableConfig) -> None:
        self.searcher, self.config = searcher, config
        self.hits: dict[int, list[Hit]] = {}  # step -> the store's documents and raw scores
        self.texts: dict[int, tuple[str | None, str | None]] = {}  # step -> thought, subquery

    def search(self, query: SearchQuery) -> list[RetrievedDoc]:
        """Search the store with the store's sync API."""
        assert self.searcher is not None
        hits = self.searcher.search(query.embedding.tolist(), query.k, query.step)
        self.hits[query.step] = hits
        return as_retrieved(hits)

    async def asearch(self, query: SearchQuery) -> list[RetrievedDoc]:
        """Search the store with its async API (a worker thread if it has none)."""
        assert self.searcher is not None
        hits = await self.searcher.asearch(query.embedding.tolist(), query.k, query.step)
        self.hits[query.step] = hits
        return as_retrieved(hits)

    def custom_event(self, event: Event) -> tuple[str, dict[str, Any]]:
        """The LangChain custom event (name, data) of an engine event."""
        if isinstance(event, TokenEvent):
            return TOKEN_EVENT, {"text": event.text}
        if isinstance(event, ThoughtEvent):
            self.texts[event.step] = (event.thought, event.subquery)
            return THOUGHT_EVENT, {
                "step": event.step,
                "action": event.action,
                "thought": event.thought,
                "subquery": event.subquery,
            }
        assert isinstance(event, StepEvent)
        if event.step not in self.hits:  # a service searched its own store
            self.hits[event.step] = as_hits(event.docs)
        return STEP_EVENT, step_data(
            event.step, event.action, event.forced, self.hits.get(event.step, [])
        )

    def dispatch(self, event: Event) -> None:
        """Dispatch an engine event to the run's sync callbacks."""
        dispatch(*self.custom_event(event), self.config)

    async def adispatch(self, event: Event) -> None:
        """Dispatch an engine event to the run's async callbacks."""
        await adispatch(*self.custom_event(event), self.config)

    def documents(self, result: LatentRAGResult, *, decode: bool) -> list[Document]:
        """The de-duplicated union of the question's documents, in step then rank order.

        Each is a copy of the store's document (same id and class) whose metadata gains
        ``latentrag_step``, ``latentrag_rank`` (0-based, in its step), ``latentrag_score`` (the
        raw store score, or None) and, with ``decode``, ``latentrag_subquery``.
        """
        seen: set[Any] = set()
        out: list[Document] = []
        for step in result.steps:
            for rank, (doc, score) in enumerate(self.hits.get(step.index, [])):
                key = document_id(doc) or ("content", doc.page_content)
                if key in seen:
                    continue
                seen.add(key)
                meta = {
                    **doc.metadata,
                    "latentrag_step": step.index,
                    "latentrag_rank": rank,
                    "latentrag_score": score,
                }
                if decode:
                    meta["latentrag_subquery"] = step.subquery
                out.append(doc.model_copy(update={"metadata": meta}))
        return out

    def steps(self, result: LatentRAGResult) -> list[dict[str, Any]]:
        """Every step as a JSON-friendly dict: the step event's data plus ``thought`` and
        ``subquery`` (None unless decoded)."""
        return [
            {
                **step_data(s.index, s.action, s.forced, self.hits.get(s.index, [])),
                "thought": s.thought,
                "subquery": s.subquery,
            }
            for s in result.steps
        ]

    def step_chunk(self, event: Event) -> dict[str, Any] | None:
        """A stream's chunk for an engine event: ``{"step": ...}`` at each step event."""
        if not isinstance(event, StepEvent):
            return None
        thought, subquery = self.texts.get(event.step, (None, None))
        data = step_data(event.step, event.action, event.forced, self.hits.get(event.step, []))
        return {"step": {**data, "thought": thought, "subquery": subquery}}

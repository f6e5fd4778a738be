"""Driving :func:`~latentrag_plugins.inference.latent_loop` against a LangChain vector store.

:func:`drive` (sync) and :func:`adrive` (async) run one loop over a batch of questions. They
yield ``(row, event_name, data)`` tuples as the loop goes (one :data:`STEP_EVENT` per retrieval
step, as soon as its documents are found, preceded with ``decode`` by a :data:`THOUGHT_EVENT`
decoded live; then the answer steps) and a :class:`LoopOutcome` last. Callers dispatch the
events to the row's callbacks.

Model forward passes hold the model's lock (:func:`~latentrag_plugins.live.model_lock`); in
:func:`adrive` they run in a worker thread so the event loop stays free, while the store is
searched with its native async API on the loop. The event loop never waits for that lock: a
wait there would stall every other call on the loop for a whole answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document

from ..inference import SearchRequest, latent_loop
from ..live import LiveDecoder, model_lock
from ..results import LatentRAGResult, RetrievedDoc, titled
from ._store_adapter import StoreSearcher
from .events import STEP_EVENT, THOUGHT_EVENT, Hit, document_id, step_data, thought_data

if TYPE_CHECKING:
    from ..model import LatentRAG

log = logging.getLogger(__name__)

Event = tuple[int, str, dict[str, Any]]
"""``(row, event name, event data)``: an event for question ``row`` of the batch."""


@dataclass
class LoopOptions:
    """Settings of one loop run (see :func:`~latentrag_plugins.inference.latent_loop`)."""

    top_k: int  # documents per retrieval step
    max_steps: int  # most retrieval steps
    min_steps: int  # retrieval steps taken whatever the action (retrievers use 1)
    decode: bool  # decode thoughts and subqueries, live at each step (see _decoder.py)
    generate_answer: bool  # generate the answer (False for retrievers)


@dataclass
class LoopOutcome:
    """What a loop run returns: the results and, per question, the hits of each step."""

    results: list[LatentRAGResult]
    hits: list[dict[int, list[Hit]]]  # per question: step index -> [(Document, raw score)]


@dataclass
class _Done:
    results: list[LatentRAGResult]


def _advance(gen: Generator, docs: Any, lock: threading.RLock) -> SearchRequest | _Done:
    """Resume the loop (model forward passes) under the model lock."""
    with lock:
        try:
            return next(gen) if docs is None else gen.send(docs)
        except StopIteration as stop:
            return _Done(stop.value)


def _close(gen: Generator, lock: threading.RLock) -> None:
    """Close the loop; under the lock, since a cancelled task's worker thread may still be in it.
    (Errors are logged: in :func:`adrive` this runs in a thread of its own.)"""
    with lock:
        try:
            gen.close()
        except Exception:
            log.exception("closing a stopped LatentRAG loop failed")


def _as_retrieved(hits: list[Hit]) -> list[RetrievedDoc]:
    """Store hits as the loop's documents (the LLM reads their text; a ``title`` metadata field
    leads it)."""
    return [
        RetrievedDoc(
            id=document_id(d) or "",
            text=titled(d.page_content, d.metadata.get("title")),
            score=math.nan if s is None else s,
            metadata={str(k): v for k, v in d.metadata.items()},  # LangChain allows any keys
        )
        for d, s in hits
    ]


def _start(
    model: LatentRAG, questions: list[str], opts: LoopOptions, on_token: Any
) -> Generator[SearchRequest, Any, list[LatentRAGResult]]:
    return latent_loop(
        model, questions, top_k=opts.top_k, max_steps=opts.max_steps, min_steps=opts.min_steps,
        generate_answer=opts.generate_answer, on_token=on_token, final_thought=opts.decode,
    )  # fmt: skip


def _record(
    req: SearchRequest, found: list[list[Hit]], hits: list[dict[int, list[Hit]]]
) -> tuple[list[Event], list[list[RetrievedDoc]]]:
    events: list[Event] = []
    for row, h in zip(req.rows, found):
        hits[row][req.step] = h
        events.append((row, STEP_EVENT, step_data(req.step, "retrieve", False, h)))
    return events, [_as_retrieved(h) for h in found]


def _thought_events(decoder: LiveDecoder, req: SearchRequest) -> list[Event]:
    return [(row, THOUGHT_EVENT, data) for row, data in decoder.step(req)]


def _final_events(results: list[LatentRAGResult], decode: bool) -> Iterator[Event]:
    """The answer step of each question: its thought (with ``decode``), then the step."""
    for row, res in enumerate(results):
        for s in res.steps:
            if s.action == "answer":
                if decode:
                    yield row, THOUGHT_EVENT, thought_data(s)
                yield row, STEP_EVENT, step_data(s.index, "answer", s.forced, [])


def drive(
    model: LatentRAG,
    questions: list[str],
    searcher: StoreSearcher,
    opts: LoopOptions,
    on_token: Callable[[int, str], None] | None = None,
) -> Iterator[Event | LoopOutcome]:
    """Run the loop with sync store searches; yields events, then the :class:`LoopOutcome`."""
    lock, hits = model_lock(model), [{} for _ in questions]
    decoder = LiveDecoder(model, len(questions)) if opts.decode else None
    gen = _start(model, questions, opts, on_token)
    try:
        req = _advance(gen, None, lock)
        while isinstance(req, SearchRequest):
            if decoder is not None:
                yield from _thought_events(decoder, req)
            found = [searcher.search(e.tolist(), req.k, req.step) for e in req.embeddings]
            events, docs = _record(req, found, hits)
            yield from events
            req = _advance(gen, docs, lock)
    finally:
        _close(gen, lock)
    if decoder is not None:
        decoder.finish(req.results)
    yield from _final_events(req.results, opts.decode)
    yield LoopOutcome(req.results, hits)


async def adrive(
    model: LatentRAG,
    questions: list[str],
    searcher: StoreSearcher,
    opts: LoopOptions,
    on_token: Callable[[int, str], None] | None = None,
) -> AsyncIterator[Event | LoopOutcome]:
    """Async :func:`drive`: native async store searches (concurrent across questions), forward
    passes and decoding in a worker thread."""
    lock, hits = model_lock(model), [{} for _ in questions]
    decoder = LiveDecoder(model, len(questions)) if opts.decode else None
    gen = _start(model, questions, opts, on_token)
    req: SearchRequest | _Done | None = None
    try:
        req = await asyncio.to_thread(_advance, gen, None, lock)
        while isinstance(req, SearchRequest):
            if decoder is not None:
                for event in await asyncio.to_thread(_thought_events, decoder, req):
                    yield event
            searches = [searcher.asearch(e.tolist(), req.k, req.step) for e in req.embeddings]
            found = list(await asyncio.gather(*searches))
            events, docs = _record(req, found, hits)
            for event in events:
                yield event
            req = await asyncio.to_thread(_advance, gen, docs, lock)
    finally:
        if not isinstance(req, _Done):  # stopped early (cancelled, closed, failed)
            # Closed in another thread, without waiting: the loop's own worker thread may
            # still be in a forward pass (a cancelled to_thread runs on), holding the lock.
            threading.Thread(target=_close, args=(gen, lock), daemon=True).start()
    if decoder is not None:
        await asyncio.to_thread(decoder.finish, req.results)
    for event in _final_events(req.results, opts.decode):
        yield event
    yield LoopOutcome(req.results, hits)


def consume(items: Iterator[Event | LoopOutcome], on_event: Callable[..., None]) -> LoopOutcome:
    """Run a :func:`drive`, passing each event to ``on_event(row, name, data)``."""
    outcome = None
    for item in items:
        if isinstance(item, LoopOutcome):
            outcome = item
        else:
            on_event(*item)
    assert outcome is not None
    return outcome


async def aconsume(
    items: AsyncIterator[Event | LoopOutcome], on_event: Callable[..., Awaitable[None]]
) -> LoopOutcome:
    """Run an :func:`adrive`, awaiting ``on_event(row, name, data)`` for each event."""
    outcome = None
    async with aclosing(items):  # type: ignore[type-var]
        async for item in items:
            if isinstance(item, LoopOutcome):
                outcome = item
            else:
                await on_event(*item)
    assert outcome is not None
    return outcome


def collect_documents(
    result: LatentRAGResult, hits: dict[int, list[Hit]], *, decode: bool
) -> list[Document]:
    """The de-duplicated union of a question's documents, in step then rank order.

    Each is a copy of the store's document (same id and class) whose metadata gains
    ``latentrag_step``, ``latentrag_rank`` (0-based, in its step), ``latentrag_score`` (the raw
    store score, or None) and, with ``decode``, ``latentrag_subquery``.
    """
    seen: set[Any] = set()
    out: list[Document] = []
    for step in result.steps:
        for rank, (doc, score) in enumerate(hits.get(step.index, [])):
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


def step_records(result: LatentRAGResult, hits: dict[int, list[Hit]]) -> list[dict[str, Any]]:
    """Every step of a result as a JSON-friendly dict: the :data:`STEP_EVENT` data plus
    ``thought`` and ``subquery`` (None unless decoded)."""
    return [
        {
            **step_data(s.index, s.action, s.forced, hits.get(s.index, [])),
            "thought": s.thought,
            "subquery": s.subquery,
        }
        for s in result.steps
    ]

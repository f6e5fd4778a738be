"""``Engine``: one model serving every request sent to it, concurrent ones sharing forward passes.

Requests come from any thread or event loop (:meth:`Engine.submit`). One worker thread runs the
rounds of :class:`~.scheduler.LatentScheduler`: each round's step pass feeds every request
ready for a step, its token pass every answering one. A new request joins at the next round;
one that ends or is cancelled leaves at once. Searches run beside the passes: sync ones in a
thread pool (one batch per store and round when the store has ``search_batch``), async ones on
the caller's event loop; a request waiting for its store takes no part in the passes.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import LatentRAGError
from ..results import RetrievedDoc
from .config import EngineConfig
from .handle import RequestCancelled, RequestHandle
from .request import PassStats, Phase, Request, SearchJob
from .scheduler import LatentScheduler
from .search import EndRequest, SearchQuery, event_loop_for

if TYPE_CHECKING:
    from ..model import LatentRAG

log = logging.getLogger(__name__)


class EngineBusy(LatentRAGError):
    """The engine's queue is full: the request was refused before any work."""


class Scheduler(Protocol):
    """What an engine drives: one agent's requests and the rounds of passes that move them
    (:class:`~.scheduler.LatentScheduler` for LatentRAG; the explicit agent has its own)."""

    requests: list[Any]  # the requests in flight
    stats: PassStats  # the passes run so far
    warmup_options: dict[str, Any]  # what a warm-up request runs (one retrieval, an answer)

    def new_requests(
        self,
        questions: list[str],
        options: dict[str, Any],
        emits: list[Callable[..., None]],
        searches: list[Any],
        loops: list[Any],
    ) -> list[Any]:
        """Requests for ``questions`` (ValueError for bad input, before any is made)."""

    def add(self, request: Any) -> None:
        """Take a request in."""

    def remove(self, request: Any) -> None:
        """Drop a request and its cache."""

    def runnable(self) -> bool:
        """Whether some request is ready for a pass."""

    def round(self) -> tuple[list[SearchJob], list[Any]]:
        """Run one round of passes; returns the searches to run and the requests that ended."""

    def deliver(self, request: Any, docs: list[Any]) -> None:
        """Hand a request its search's documents."""

    def end(self, request: Any) -> None:
        """End a request at its search (``EndRequest``), with the result so far."""


class Engine:
    """Runs the requests of one model with continuous batching.

    Args:
        model: The model.
        config: Its settings (default :class:`EngineConfig`); or pass them as keywords.
        scheduler: What runs the model's passes (default: the LatentRAG loop's).
    """

    def __init__(
        self,
        model: LatentRAG | Any,
        config: EngineConfig | None = None,
        *,
        scheduler: Scheduler | None = None,
        **settings: Any,
    ) -> None:
        self.model = model
        self.config = config or EngineConfig(**settings)
        self._scheduler: Scheduler = scheduler or LatentScheduler(model)
        self._cond = threading.Condition()
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._waiting: collections.deque[Request] = collections.deque()
        self._load = 0  # requests submitted and not ended
        self._handles: dict[int, RequestHandle] = {}
        self._searching: dict[int, concurrent.futures.Future[Any] | None] = {}
        self._last_round: set[int] = set()  # requests whose searches the last round sent
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._worker = threading.local()  # per search worker: the thread count it applied
        self._closed = False

    # ------------------------------------------------------------------ callers' side
    def submit(
        self,
        question: str,
        search: Callable[..., Any],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        **options: Any,
    ) -> RequestHandle:
        """Send one question; returns its handle at once.

        Args:
            question: The question.
            search: Its store's search function: ``search(SearchQuery) -> list[RetrievedDoc]``,
                sync (run in a worker thread) or async (run on ``loop``, by default the running
                one). See :class:`~.search.StoreSearch` for a store.
            loop: The event loop an async ``search`` runs on.
            **options: ``max_steps``, ``top_k``, ``min_steps``, ``decode``, ``logit_lens``,
                ``generate_answer``, ``final_thought`` (see :class:`~.request.RequestOptions`).

        Raises:
            ValueError: An empty or too long question, or a bad option.
            EngineBusy: The queue is full.
        """
        return self.submit_many([question], search, loop=loop, **options)[0]

    def submit_many(
        self,
        questions: Sequence[str],
        search: Callable[..., Any] | Sequence[Callable[..., Any]],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        **options: Any,
    ) -> list[RequestHandle]:
        """Send several questions at once (they start in the same pass); same arguments as
        :meth:`submit`, with one search function for all or one per question. All are checked
        before any is sent."""
        questions = list(questions)
        searches = list(search) if isinstance(search, Sequence) else [search] * len(questions)
        if len(searches) != len(questions):
            raise ValueError("pass one search function, or one per question")
        loops = [event_loop_for(s, loop) for s in searches]
        handles = [RequestHandle() for _ in questions]
        requests = self._scheduler.new_requests(
            questions, options, [h.send for h in handles], searches, loops
        )
        for handle, req in zip(handles, requests):
            handle.on_cancel = functools.partial(self._post, "cancel", req)
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._load + len(requests) > self.config.max_batch + self.config.max_queue:
                raise EngineBusy(
                    f"the engine is full: {self.config.max_batch} requests in flight "
                    f"(max_batch) and {self.config.max_queue} waiting (max_queue); try again "
                    "later, or raise max_queue"
                )
            for req, handle in zip(requests, handles):
                self._handles[id(req)] = handle
                self._inbox.append(("new", req))
            self._load += len(requests)
            self._start()
            self._cond.notify()
        return handles

    def warmup(self) -> None:
        """Pay the one-off costs (kernel choices for new shapes, packed weights, caches) before
        the first real request: one request over a made-up document goes through every kind
        of pass. Servers call it at start; ``latentrag eval``, ``bench`` and ``demo`` do too."""
        self.submit(_WARMUP_QUESTION, _warmup_search, **self._scheduler.warmup_options).result()

    @property
    def stats(self) -> PassStats:
        """Step and token passes run so far, and the rows they fed (``stats.mean_batch``)."""
        return self._scheduler.stats

    @property
    def load(self) -> int:
        """Requests sent and not ended yet (in flight or waiting)."""
        with self._cond:
            return self._load

    def close(self) -> None:
        """Cancel every request and stop the thread and the search workers."""
        with self._cond:
            self._closed = True
            for req in [*self._waiting, *self._scheduler.requests]:
                self._inbox.append(("cancel", req))
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ messages to the thread
    def _post(self, *message: Any) -> None:
        with self._cond:
            self._inbox.append(message)
            self._cond.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="latentrag-engine", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ the engine's thread
    def _run(self) -> None:
        threads: int | None = None
        try:
            while (inbox := self._next_work()) is not None:
                threads = self._threads(threads)
                self._apply(inbox)
                self._admit()
                if not self._scheduler.runnable():
                    continue
                if self._should_linger():
                    self._apply(self._linger())
                self._round()
                self._admit()  # in the places of requests that ended
        except BaseException as exc:  # a bug: fail every request rather than hang the callers
            log.exception("the LatentRAG engine stopped")
            with self._cond:
                self._thread = None
                handles, self._handles = list(self._handles.values()), {}
                self._load = 0
            self._waiting.clear()
            self._scheduler.requests.clear()
            for handle in handles:
                handle.close(None, RuntimeError(f"the LatentRAG engine stopped: {exc!r}"))
            raise

    def _threads(self, applied: int | None) -> int:
        """Give this thread the configured torch (and FAISS) threads when the setting changed
        (a count is per OS thread); returns what is applied (0: the library's default)."""
        from ..threads import apply_default, set_threads

        want = self.config.threads or 0
        if want != applied:
            if want:
                set_threads(want)
            else:
                apply_default()
        return want

    def _next_work(self) -> list[tuple[Any, ...]] | None:
        """Wait for messages or runnable requests; None when idle long enough to stop."""
        with self._cond:
            while not self._inbox and not self._scheduler.runnable():
                if self._scheduler.requests or self._waiting:
                    self._cond.wait()  # requests wait for their stores
                    continue
                if self._closed or (
                    not self._cond.wait(self.config.idle_exit_s) and not self._inbox
                ):
                    self._thread = None
                    return None
            inbox = list(self._inbox)
            self._inbox.clear()
        return inbox

    def _should_linger(self) -> bool:
        return bool(
            self.config.search_linger_ms
            and self._last_round & set(self._searching)
            and any(r.phase is Phase.FEED for r in self._scheduler.requests)
        )

    def _linger(self) -> list[tuple[Any, ...]]:
        """Wait (briefly) for the last round's searches, so their requests join the pass."""
        deadline = time.perf_counter() + self.config.search_linger_ms / 1e3
        with self._cond:
            while self._last_round & (set(self._searching) - self._answered()):
                left = deadline - time.perf_counter()
                if left <= 0 or not self._cond.wait(left):
                    break
            inbox = list(self._inbox)
            self._inbox.clear()
        return inbox

    def _answered(self) -> set[int]:
        """Requests whose search results wait in the inbox (the lock is held)."""
        return {id(m[1].request) for m in self._inbox if m[0] == "found"}

    def _apply(self, inbox: list[tuple[Any, ...]]) -> None:
        for kind, *args in inbox:
            if kind == "new":
                if self._closed:
                    self._end(args[0], None, RequestCancelled("the engine was closed"))
                else:
                    self._waiting.append(args[0])
            elif kind == "found":
                self._found(*args)
            elif kind == "cancel":
                self._drop(args[0], RequestCancelled("the request was cancelled"))

    def _admit(self) -> None:
        while self._waiting and len(self._scheduler.requests) < self.config.max_batch:
            self._scheduler.add(self._waiting.popleft())

    def _round(self) -> None:
        running = [r for r in self._scheduler.requests if r.phase in (Phase.FEED, Phase.GENERATE)]
        try:
            jobs, done = self._scheduler.round()
        except Exception as exc:  # a pass failed: its requests' state is unknown
            for req in running:
                self._drop(req, exc)
            return
        for req in done:
            self._end(req, req.result, req.error)
        self._last_round = {id(j.request) for j in jobs}
        self._dispatch(jobs)

    # ------------------------------------------------------------------ searches
    def _dispatch(self, jobs: list[SearchJob]) -> None:
        """Start every job's search: async ones on their loop, sync ones in the pool (one
        batch per store that can search several embeddings)."""
        batches: dict[tuple[int, int], list[SearchJob]] = {}
        for job in jobs:
            search = job.request.search
            if job.request.loop is not None:
                self._searching[id(job.request)] = self._start_async(job)
            elif hasattr(search, "batch") and hasattr(search, "group"):
                batches.setdefault((id(search.group), job.k), []).append(job)
            else:
                self._searching[id(job.request)] = self._workers().submit(self._search, [job])
        for group in batches.values():
            self._workers().submit(self._search, group)
            for job in group:  # a batch is not cancelled with one of its requests
                self._searching[id(job.request)] = None

    def _workers(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.config.search_workers, thread_name_prefix="latentrag-search"
            )
        return self._pool

    def _search(self, jobs: list[SearchJob]) -> None:
        """Run sync searches (in a worker thread) and post what they found."""
        # The engine's thread count here too: a store's OpenMP pool (FAISS) or a query encoder
        # would otherwise take every core, and contend with the passes.
        self._worker.threads = self._threads(getattr(self._worker, "threads", None))
        t0 = time.perf_counter()
        search = jobs[0].request.search
        try:
            if len(jobs) > 1 or hasattr(search, "batch"):
                import numpy as np

                found = search.batch(np.stack([j.embedding for j in jobs]), jobs[0].k)
                if len(found) != len(jobs):
                    raise RuntimeError("search_batch returned a wrong number of results")
            else:
                found = [search(_query(jobs[0]))]
        except BaseException as exc:
            for job in jobs:
                self._post("found", job, None, exc, time.perf_counter() - t0)
            return
        for job, docs in zip(jobs, found):
            self._post("found", job, docs, None, time.perf_counter() - t0)

    def _start_async(self, job: SearchJob) -> concurrent.futures.Future[Any]:
        t0 = time.perf_counter()
        coro = job.request.search(_query(job))
        try:
            future = asyncio.run_coroutine_threadsafe(coro, job.request.loop)
        except RuntimeError as exc:  # the caller's event loop has closed
            coro.close()
            self._post("found", job, None, exc, 0.0)
            return None

        def done(f: concurrent.futures.Future[Any]) -> None:
            if f.cancelled():
                return  # cancelled with its request
            self._post("found", job, f.result() if f.exception() is None else None,
                       f.exception(), time.perf_counter() - t0)  # fmt: skip

        future.add_done_callback(done)
        return future

    def _found(self, job: SearchJob, docs: Any, error: BaseException | None, s: float) -> None:
        req = job.request
        if id(req) not in self._searching:
            return  # cancelled meanwhile
        del self._searching[id(req)]
        req.stages["retrieval"] += s * 1e3
        if isinstance(error, EndRequest):
            self._scheduler.end(req)
            self._end(req, req.result, None)
            return
        try:
            if error is not None:
                raise error
            self._scheduler.deliver(req, list(docs))
        except BaseException as exc:
            self._drop(req, exc)

    # ------------------------------------------------------------------ ending requests
    def _drop(self, req: Request, error: BaseException) -> None:
        """End a request that did not finish (cancelled or failed)."""
        if req in self._waiting:
            self._waiting.remove(req)
        future = self._searching.pop(id(req), None)
        if future is not None:
            future.cancel()
        self._scheduler.remove(req)
        self._end(req, None, error)

    def _end(self, req: Request, result: Any, error: BaseException | None) -> None:
        handle = self._handles.pop(id(req), None)
        if handle is not None:
            with self._cond:
                self._load -= 1
            handle.close(result, error)


def _query(job: SearchJob) -> SearchQuery:
    req = job.request
    subquery = req.steps[-1].subquery if req.steps else None
    return SearchQuery(job.embedding, job.k, job.step, req.question, subquery)


_WARMUP_QUESTION = "Which river flows through the city where the author of the first book was born?"
_WARMUP_TEXT = "A made-up document.\n" + "The river flows through the old city by the sea. " * 8


def _warmup_search(query: SearchQuery) -> list[RetrievedDoc]:
    """Made-up documents for :meth:`Engine.warmup`."""
    return [RetrievedDoc(id=f"warmup-{i}", text=_WARMUP_TEXT, score=1.0) for i in range(query.k)]

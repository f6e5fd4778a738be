"""``LatentRAGQueryEngine``: a drop-in LlamaIndex query engine that reasons, retrieves and answers
with LatentRAG over a ``VectorStoreIndex``, optionally streaming the answer."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import math
import os
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Generator
from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Context

from ..errors import GenerationStopped
from ..results import LatentRAGResult
from ._driver import RunState
from .events import stream_events_to
from .retriever import LatentRAGRetriever

if TYPE_CHECKING:
    from ..model import LatentRAG

dispatcher = get_dispatcher(__name__)

EMPTY_RESPONSE = "Empty Response"  # what LlamaIndex's synthesizers answer without nodes
TOOL_DESCRIPTION = (
    "Answers a question over the knowledge base, reasoning and retrieving in several latent "
    "steps (LatentRAG). Input: the full natural-language question."
)


def response_metadata(result: LatentRAGResult) -> dict[str, Any]:
    """``{"latent_steps", "timings_ms", "forward_passes", "input_tokens", "output_tokens"}``."""
    steps = [
        {
            "index": s.index,
            "action": s.action,
            "forced": s.forced,
            "thought": s.thought,
            "subquery": s.subquery,
            "node_ids": [d.id for d in s.docs],
            "scores": [None if math.isnan(d.score) else d.score for d in s.docs],
        }
        for s in result.steps
    ]
    return {
        "latent_steps": steps,
        "timings_ms": result.timings_ms.model_dump(),
        "forward_passes": result.forward_passes,
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
    }


def _stream_piece(item: tuple[str, Any], metadata: dict[str, Any]) -> tuple[str | None, bool]:
    """What a streaming worker's ``(kind, value)`` item yields, and whether the stream ends
    with it (``done`` fills ``metadata``; ``error`` raises)."""
    kind, value = item
    if kind == "error":
        raise value
    if kind == "done":
        metadata.update(response_metadata(value[0]))
        return (EMPTY_RESPONSE if value[1].empty else None), True
    return value, False


def _answer(result: LatentRAGResult, state: RunState) -> str:
    return EMPTY_RESPONSE if state.empty else result.answer


class LatentRAGQueryEngine(BaseQueryEngine):
    """Answer with LatentRAG: latent steps search the index, then the model answers.

    Returns ``Response(answer, source_nodes, metadata)`` where ``source_nodes`` are every node the
    model read (de-duplicated, step then rank order, with ``latentrag_step`` / ``latentrag_rank``
    metadata) and ``metadata`` holds ``latent_steps`` (action, node ids, scores and, with
    ``decode=True``, the decoded thought and subquery of each step), ``timings_ms`` and
    ``forward_passes``. With ``streaming=True``, ``query`` returns a ``StreamingResponse`` and
    ``aquery`` an ``AsyncStreamingResponse`` whose generator yields answer tokens; their
    ``source_nodes`` are complete when returned and ``metadata`` is filled when the stream ends.

    An empty index answers ``"Empty Response"`` with no source nodes (LlamaIndex's convention),
    after one latent step. Step and thought events come from the
    ``latentrag_plugins.llama_index.query_engine`` dispatcher, inside the query span.

    Args:
        model: A :class:`~latentrag_plugins.LatentRAG` or a checkpoint directory.
        index: A ``VectorStoreIndex`` built with the model's document tower; checked.
        streaming: Stream answer tokens.
        decode: Decode each step's latent thought and subquery.
        top_k: Nodes per latent step (default: the model's ``config.top_k``).
        max_steps: Most latent retrieval steps, at least 1 (default: ``config.max_steps``).
        callback_manager: LlamaIndex callback manager.
        retriever_kwargs: Extra ``index.as_retriever`` arguments, e.g. ``filters``.
    """

    def __init__(
        self,
        model: LatentRAG | str | os.PathLike[str],
        index: Any,
        *,
        streaming: bool = False,
        decode: bool = False,
        top_k: int | None = None,
        max_steps: int | None = None,
        callback_manager: CallbackManager | None = None,
        retriever_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._retriever = LatentRAGRetriever(
            model,
            index,
            top_k=top_k,
            max_steps=max_steps,
            decode=decode,
            callback_manager=callback_manager,
            retriever_kwargs=retriever_kwargs,
        )
        self._driver = self._retriever._driver
        self.streaming = streaming
        super().__init__(callback_manager=callback_manager)

    @property
    def retriever(self) -> LatentRAGRetriever:
        """The engine's :class:`LatentRAGRetriever` (same model, index and settings)."""
        return self._retriever

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}

    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Run only the latent retrieval steps."""
        return self._retriever.retrieve(query_bundle)

    async def aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Async :meth:`retrieve`."""
        return await self._retriever.aretrieve(query_bundle)

    # ------------------------------------------------------------------------------ queries
    @dispatcher.span
    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        """Answer synchronously (a ``StreamingResponse`` when streaming)."""
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as event:
            if self.streaming:
                response: RESPONSE_TYPE = self._stream(query_bundle)
            else:
                plan = self._driver.plan(
                    query_bundle.query_str,
                    dispatcher,
                    generate_answer=True,
                    caller=type(self).__name__,
                )
                result, state = self._driver.run_plan(plan)
                response = Response(_answer(result, state), state.nodes, response_metadata(result))
            event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    @dispatcher.span
    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        """Answer on the event loop (an ``AsyncStreamingResponse`` when streaming)."""
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as event:
            if self.streaming:
                response: RESPONSE_TYPE = await self._astream(query_bundle)
            else:
                stopped = threading.Event()  # cancelled: end the answer at its next token
                plan = self._driver.plan(
                    query_bundle.query_str,
                    dispatcher,
                    generate_answer=True,
                    caller=type(self).__name__,
                    on_token=_stoppable(lambda _text: None, stopped),
                )
                try:
                    result, state = await self._driver.arun_plan(plan)
                except asyncio.CancelledError:
                    stopped.set()
                    raise
                response = Response(_answer(result, state), state.nodes, response_metadata(result))
            event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    def _stream(self, query_bundle: QueryBundle) -> StreamingResponse:
        """Run the loop in a worker thread; return once the answer starts (all nodes known)."""
        items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        stopped = threading.Event()
        state = RunState()
        plan = self._stream_plan(query_bundle, state, items.put, stopped)
        self._start(plan, items.put)
        first = items.get()
        if first[0] == "error":
            raise first[1]
        metadata: dict[str, Any] = {}

        def tokens() -> Generator[str, None, None]:
            item = first
            try:
                while True:
                    piece, end = _stream_piece(item, metadata)
                    if piece:
                        yield piece
                    if end:
                        return
                    item = items.get()
            finally:  # closed early: end the answer at its next token
                stopped.set()

        return StreamingResponse(tokens(), source_nodes=state.nodes, metadata=metadata)

    async def _astream(self, query_bundle: QueryBundle) -> AsyncStreamingResponse:
        """Run the loop in a worker thread that searches the store with its async API on this
        event loop; return once the answer starts (all nodes known). The answer's tokens need no
        event loop, so the response reads on any (LlamaIndex's ``str()`` of it reads on a new one
        in another thread while this one waits)."""
        loop = asyncio.get_running_loop()
        items = _Handoff()
        stopped = threading.Event()
        searching: list[concurrent.futures.Future[list[NodeWithScore]]] = []

        def search(bundle: QueryBundle) -> list[NodeWithScore]:
            if stopped.is_set():
                raise GenerationStopped("the caller stopped waiting for this answer")
            aretrieve = self._driver.vector_retriever.aretrieve(bundle)
            searching[:] = [asyncio.run_coroutine_threadsafe(aretrieve, loop)]
            if stopped.is_set():  # cancelled meanwhile, perhaps before the search was listed
                searching[0].cancel()
            return searching[0].result()

        state = RunState()
        self._start(self._stream_plan(query_bundle, state, items.put, stopped), items.put, search)
        try:
            first = await items.get()
        except asyncio.CancelledError:  # the caller gave up: so does the loop, at its next search
            stopped.set()  # or answer token
            for pending in searching:
                pending.cancel()
            raise
        if first[0] == "error":
            raise first[1]
        metadata: dict[str, Any] = {}

        async def tokens() -> AsyncGenerator[str, None]:
            item = first
            try:
                while True:
                    piece, end = _stream_piece(item, metadata)
                    if piece:
                        yield piece
                    if end:
                        return
                    item = await items.get()
            finally:  # the consumer stopped early (closed, cancelled): end the answer at its
                stopped.set()  # next token

        return AsyncStreamingResponse(tokens(), source_nodes=state.nodes, metadata=metadata)

    def _stream_plan(
        self, query_bundle: QueryBundle, state: RunState, put: Any, stopped: threading.Event
    ) -> Generator:
        """The plan of a streamed answer: its tokens go to ``put`` as ``("token", text)``."""
        return self._driver.plan(
            query_bundle.query_str,
            dispatcher,
            generate_answer=True,
            caller=type(self).__name__,
            state=state,
            on_token=_stoppable(lambda text: put(("token", text)), stopped),
        )

    def _start(
        self,
        plan: Generator,
        put: Any,
        search: Callable[[QueryBundle], list[NodeWithScore]] | None = None,
    ) -> None:
        """Run ``plan`` in a worker thread, inside the current span; its outcome goes to ``put``
        as ``("done", (result, state))`` or ``("error", exception)``."""

        def work() -> None:
            try:
                put(("done", self._driver.run_plan(plan, search)))
            except BaseException as exc:  # handed to the consumer
                put(("error", exc))

        run = contextvars.copy_context().run  # keeps the query span for the events
        threading.Thread(target=run, args=(work,), name="latentrag-stream", daemon=True).start()

    # ------------------------------------------------------------------------------ agent tool
    def as_tool(
        self,
        name: str = "latentrag",
        description: str = TOOL_DESCRIPTION,
        *,
        return_direct: bool = False,
    ) -> FunctionTool:
        """This engine as an agent tool that also streams its step and thought events.

        The tool takes the workflow ``Context`` that ``FunctionAgent`` / ``ReActAgent`` /
        ``AgentWorkflow`` inject into ``FunctionTool`` s with a ``ctx: Context`` parameter, and
        writes :class:`~latentrag_plugins.llama_index.events.LatentStepStreamEvent` and
        :class:`~latentrag_plugins.llama_index.events.LatentThoughtStreamEvent` to the agent's
        event stream (``handler.stream_events()``). Its output is the answer text; the raw output
        is the ``Response`` with source nodes and metadata. (``QueryEngineTool`` works too, with
        events on the dispatcher only.)

        Args:
            name: Tool name shown to the agent's LLM.
            description: Tool description shown to the agent's LLM.
            return_direct: Return the tool output as the agent's answer.
        """
        engine = self

        async def latentrag(ctx, query):  # type: ignore[no-untyped-def]
            """Answer a question with LatentRAG.

            Args:
                query (str): The full natural-language question to answer.
            """
            with stream_events_to(ctx):
                response = await engine.aquery(query)
                if isinstance(response, AsyncStreamingResponse):
                    response = await response.get_response()
            return response

        # Real classes, not strings: FunctionTool finds the Context parameter by annotation.
        latentrag.__annotations__ = {"ctx": Context, "query": str, "return": Response}
        return FunctionTool.from_defaults(
            async_fn=latentrag, name=name, description=description, return_direct=return_direct
        )


def _stoppable(put: Any, stopped: threading.Event) -> Any:
    """An ``on_token`` that hands each answer token to ``put`` from the worker thread, and ends
    the answer there (:class:`GenerationStopped`) once ``stopped`` is set: nobody waits for it."""

    def on_token(_row: int, text: str) -> None:
        if stopped.is_set():
            raise GenerationStopped("the caller stopped waiting for this answer")
        put(text)

    return on_token


class _Handoff:
    """A queue from worker threads to an async reader on whichever event loop reads it."""

    def __init__(self) -> None:
        self._items: collections.deque[tuple[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def put(self, item: tuple[str, Any]) -> None:
        """Add ``item`` (from any thread) and wake the reader, if one waits."""
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, woken = waiter
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody reads
                loop.call_soon_threadsafe(_wake, woken)

    async def get(self) -> tuple[str, Any]:
        """The next item, waiting on the running event loop until there is one."""
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                loop = asyncio.get_running_loop()
                woken = loop.create_future()
                self._waiter = (loop, woken)
            await woken


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():  # a reader cancelled meanwhile leaves a cancelled future
        woken.set_result(None)

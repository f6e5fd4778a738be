"""``LatentRAGQueryEngine``: a drop-in LlamaIndex query engine that reasons, retrieves and answers
with LatentRAG over a ``VectorStoreIndex``, optionally streaming the answer."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncGenerator, Generator
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

from ..engine import RequestHandle, StepEvent, TokenEvent
from ..results import LatentRAGResult
from ._run import Run
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
    """``{"latent_steps", "timings_ms", "forward_passes", "input_tokens", "output_tokens",
    "batch_size"}``."""
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
        "batch_size": result.batch_size,
    }


def _is_answer_step(event: Any) -> bool:
    return isinstance(event, StepEvent) and event.action == "answer"


class LatentRAGQueryEngine(BaseQueryEngine):
    """Answer with LatentRAG: latent steps search the index, then the model answers.

    Returns ``Response(answer, source_nodes, metadata)`` where ``source_nodes`` are every node the
    model read (de-duplicated, step then rank order, with ``latentrag_step`` / ``latentrag_rank``
    metadata) and ``metadata`` holds ``latent_steps`` (action, node ids, scores and, with
    ``decode=True``, the decoded thought and subquery of each step), ``timings_ms`` and
    ``forward_passes``. With ``streaming=True``, ``query`` returns a ``StreamingResponse`` and
    ``aquery`` an ``AsyncStreamingResponse`` whose generator yields answer text; their
    ``source_nodes`` are complete when returned and ``metadata`` is filled when the stream ends.

    An empty index answers ``"Empty Response"`` with no source nodes (LlamaIndex's convention),
    after one latent step. Step and thought events come from the
    ``latentrag_plugins.llama_index.query_engine`` dispatcher, inside the query span.

    Queries from any number of threads or tasks run on the model's engine (``model.engine``) and
    share forward passes. Cancelling an ``aquery`` (or closing a stream early) ends its answer
    at the next token.

    Args:
        model: A :class:`~latentrag_plugins.LatentRAG`, a checkpoint directory, or a LatentRAG
            service's URL (``latentrag serve``; it searches its own store: no ``index``).
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
        model: LatentRAG | str | os.PathLike[str] | Any,
        index: Any = None,
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

    def _start(self, query_bundle: QueryBundle, asynchronous: bool) -> tuple[Run, RequestHandle]:
        return self._retriever.start(
            query_bundle.query_str, self, dispatcher, answer=True, asynchronous=asynchronous
        )

    # ------------------------------------------------------------------------------ queries
    @dispatcher.span
    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        """Answer synchronously (a ``StreamingResponse`` when streaming)."""
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as event:
            run, handle = self._start(query_bundle, asynchronous=False)
            if self.streaming:
                response: RESPONSE_TYPE = self._stream(run, handle)
            else:
                result = handle.result(on_event=run.emit)
                response = Response(_answer(result, run), run.nodes, response_metadata(result))
            event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    @dispatcher.span
    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        """Answer on the event loop (an ``AsyncStreamingResponse`` when streaming)."""
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as event:
            run, handle = self._start(query_bundle, asynchronous=True)
            if self.streaming:
                response: RESPONSE_TYPE = await self._astream(run, handle)
            else:
                result = await handle.aresult(on_event=run.emit)
                response = Response(_answer(result, run), run.nodes, response_metadata(result))
            event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    def _stream(self, run: Run, handle: RequestHandle) -> StreamingResponse:
        """Return once the answer starts (all nodes known); the generator yields its text."""
        try:
            while (event := handle.next_event()) is not None:
                run.emit(event)
                if _is_answer_step(event):
                    break
        except BaseException:
            handle.cancel()
            raise
        metadata: dict[str, Any] = {}

        def tokens() -> Generator[str, None, None]:
            try:
                while (event := handle.next_event()) is not None:
                    if isinstance(event, TokenEvent):
                        yield event.text
            finally:  # closed early: the request ends at its next token
                handle.cancel()
            result = handle.result()
            metadata.update(response_metadata(result))
            if run.empty:
                yield EMPTY_RESPONSE

        return StreamingResponse(tokens(), source_nodes=run.nodes, metadata=metadata)

    async def _astream(self, run: Run, handle: RequestHandle) -> AsyncStreamingResponse:
        """Return once the answer starts (all nodes known). The answer's text reads on any event
        loop (LlamaIndex's ``str()`` of it reads on a new one in another thread)."""
        try:
            while (event := await handle.anext_event()) is not None:
                run.emit(event)
                if _is_answer_step(event):
                    break
        except BaseException:  # cancelled too: the request ends with the call
            handle.cancel()
            raise
        metadata: dict[str, Any] = {}

        async def tokens() -> AsyncGenerator[str, None]:
            try:
                while (event := await handle.anext_event()) is not None:
                    if isinstance(event, TokenEvent):
                        yield event.text
            finally:  # closed or cancelled early: the request ends at its next token
                handle.cancel()
            metadata.update(response_metadata(await handle.aresult()))
            if run.empty:
                yield EMPTY_RESPONSE

        return AsyncStreamingResponse(tokens(), source_nodes=run.nodes, metadata=metadata)

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


def _answer(result: LatentRAGResult, run: Run) -> str:
    return EMPTY_RESPONSE if run.empty else result.answer

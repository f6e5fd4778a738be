"""``LatentRAGChain``: question -> answer, source documents and steps, as a LangChain Runnable.

It replaces a retrieval chain (retriever + prompt + LLM) with one LatentRAG model: the model
reasons and searches the vector store in latent space, then writes the answer. It works as a
LangGraph node (input ``{"question": ...}``, output merged into the state) and as an agent
tool (``chain.as_tool()``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import aclosing
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.vectorstores import VectorStore
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ..errors import GenerationStopped
from ..inference import question_prompt
from ..live import check_question, resolve_model
from ..model import LatentRAG
from ..results import LatentRAGResult
from ._loop import (
    LoopOptions,
    LoopOutcome,
    aconsume,
    adrive,
    collect_documents,
    consume,
    drive,
    step_records,
)
from ._store_adapter import StoreSearcher, check_store
from .events import STEP_EVENT, THOUGHT_EVENT, TOKEN_EVENT, Hit, adispatch, dispatch

ChainInput = str | dict[str, Any]
_QUESTION_KEYS = ("question", "input", "query")


class LatentRAGChainInput(BaseModel):
    """Input schema of :class:`LatentRAGChain` (a bare string is accepted too)."""

    question: str = Field(description="The question to answer.")


class LatentRAGChain(RunnableSerializable[ChainInput, dict[str, Any]]):
    """Answer questions with LatentRAG over any LangChain vector store.

    Input: a question string, or a dict with ``"question"`` (``"input"`` and ``"query"``, the
    keys of LangChain's retrieval chains, are accepted too; other keys are ignored). Output::

        {"answer": str,
         "source_documents": [Document, ...],  # every document read, de-duplicated, in step
                                               # then rank order, with latentrag_* metadata
         "steps": [{"step", "action", "forced", "document_ids", "scores", "thought",
                    "subquery"}, ...],
         "timings_ms": {"prefill", "reasoning", "retrieval", "answer", "decode", "total"},
         "forward_passes": int, "input_tokens": int, "output_tokens": int}

    ``batch``/``abatch`` answer all questions in one batched latent loop (shared forward passes;
    timings are those of the batch). ``stream``/``astream`` yield ``{"step": {...}}`` for each
    latent step as it happens (the step's entry of ``steps``), then the output above as the last
    chunk.

    Events (custom callback events, see :mod:`latentrag_plugins.langchain.events`):
    ``latentrag_step`` per latent step, ``latentrag_thought`` per step with ``decode=True`` (just
    before the step's ``latentrag_step``), and ``latentrag_token`` per answer token.

    An empty store (or a search that finds nothing) gives steps without documents: the model
    answers from the question alone and ``source_documents`` is ``[]``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: LatentRAG = Field(repr=False, description="LatentRAG model or checkpoint path.")
    vectorstore: VectorStore = Field(description="Store built with LatentRAGEmbeddings.")
    top_k: int | None = Field(
        default=None, ge=1, description="Documents retrieved per latent step (None: the model's)."
    )
    max_steps: int | None = Field(
        default=None, ge=0, description="Most latent retrieval steps (None: the model's)."
    )
    min_steps: int = Field(
        default=0, ge=0, description="Retrieval steps taken whatever the model decides."
    )
    decode: bool = Field(default=False, description="Decode thoughts and subqueries to text.")
    search_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the store's search by vector."
    )
    _dim_checked: bool = PrivateAttr(default=False)

    @field_validator("model", mode="before")
    @classmethod
    def _load_model(cls, value: Any) -> LatentRAG:
        return resolve_model(value)

    @model_validator(mode="after")
    def _check_store(self) -> LatentRAGChain:
        self.top_k = self.model.config.top_k if self.top_k is None else self.top_k
        self.max_steps = self.model.config.max_steps if self.max_steps is None else self.max_steps
        StoreSearcher(self.vectorstore, self.search_kwargs)  # raises if it cannot search
        self._dim_checked = check_store(self.vectorstore, self.model)
        return self

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        """``{"question": str}`` (what ``as_tool`` exposes)."""
        return LatentRAGChainInput

    # ------------------------------------------------------------------------------ helpers
    def _question(self, value: Any) -> str:
        if isinstance(value, Mapping):
            value = next((value[k] for k in _QUESTION_KEYS if k in value), None)
        elif not isinstance(value, str):  # e.g. a LangGraph state that is a pydantic model
            found = (getattr(value, k, None) for k in _QUESTION_KEYS)
            value = next((v for v in found if v is not None), value)
        return check_question(value, type(self).__name__)

    def _prepare(self) -> tuple[StoreSearcher, LoopOptions]:
        if not self._dim_checked:
            self._dim_checked = check_store(self.vectorstore, self.model)
        opts = LoopOptions(
            top_k=self.top_k, max_steps=self.max_steps, min_steps=self.min_steps,
            decode=self.decode, generate_answer=True,
        )  # fmt: skip
        return StoreSearcher(self.vectorstore, self.search_kwargs), opts

    def _output(self, result: LatentRAGResult, hits: dict[int, list[Hit]]) -> dict[str, Any]:
        return {
            "answer": result.answer,
            "source_documents": collect_documents(result, hits, decode=self.decode),
            "steps": step_records(result, hits),
            "timings_ms": result.timings_ms.model_dump(),
            "forward_passes": result.forward_passes,
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
        }

    def _run(self, questions: list[str], configs: list[RunnableConfig]) -> list[dict[str, Any]]:
        searcher, opts = self._prepare()
        out = consume(
            drive(
                self.model, questions, searcher, opts,
                on_token=lambda row, text: dispatch(TOKEN_EVENT, {"text": text}, configs[row]),
            ),
            lambda row, name, data: dispatch(name, data, configs[row]),
        )  # fmt: skip
        return [self._output(r, h) for r, h in zip(out.results, out.hits)]

    async def _arun(
        self, questions: list[str], configs: list[RunnableConfig]
    ) -> list[dict[str, Any]]:
        searcher, opts = self._prepare()
        tokens = _TokenRelay(configs)

        async def on_event(row: int, name: str, data: dict[str, Any]) -> None:
            await tokens.flush()  # answer tokens first, in order
            await adispatch(name, data, configs[row])

        try:
            out = await aconsume(adrive(self.model, questions, searcher, opts, tokens), on_event)
        except asyncio.CancelledError:
            tokens.stop()
            raise
        except GenerationStopped:
            await tokens.flush()  # the handler error that ended the answers, not this one
            raise
        await tokens.flush()
        return [self._output(r, h) for r, h in zip(out.results, out.hits)]

    def _parse_all(self, inputs: list[Any]) -> tuple[list[int], list[str], list[Any]]:
        """Indices and questions of the valid inputs; a ValueError in place of the others (empty,
        or too long: one such input fails, not its whole batch)."""
        slots: list[Any] = []
        for value in inputs:
            try:
                question = self._question(value)
                question_prompt(self.model, question)
                slots.append(question)
            except ValueError as exc:
                slots.append(exc)
        valid = [i for i, s in enumerate(slots) if isinstance(s, str)]
        return valid, [slots[i] for i in valid], slots

    # ------------------------------------------------------------------------------ invoke
    def invoke(
        self, input: ChainInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Answer one question."""
        return self._call_with_config(self._invoke, input, config, **kwargs)

    def _invoke(
        self, input: ChainInput, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> dict[str, Any]:
        return self._run([self._question(input)], [config])[0]

    async def ainvoke(
        self, input: ChainInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Answer one question (store searched with its async API)."""
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    async def _ainvoke(
        self,
        input: ChainInput,
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> dict[str, Any]:
        return (await self._arun([self._question(input)], [config]))[0]

    # ------------------------------------------------------------------------------ batch
    def batch(
        self,
        inputs: list[ChainInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Answer several questions in one batched latent loop (one run per input)."""
        return self._batch_with_config(
            self._batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    def _batch(
        self,
        inputs: list[ChainInput],
        run_manager: list[CallbackManagerForChainRun],
        config: list[RunnableConfig],
    ) -> list[Any]:
        valid, questions, slots = self._parse_all(inputs)
        outputs = self._run(questions, [config[i] for i in valid]) if valid else []
        for i, out in zip(valid, outputs):
            slots[i] = out
        return slots

    async def abatch(
        self,
        inputs: list[ChainInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Async :meth:`batch`: one batched latent loop, store searched with its async API."""
        return await self._abatch_with_config(
            self._abatch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    async def _abatch(
        self,
        inputs: list[ChainInput],
        run_manager: list[AsyncCallbackManagerForChainRun],
        config: list[RunnableConfig],
    ) -> list[Any]:
        valid, questions, slots = self._parse_all(inputs)
        outputs = await self._arun(questions, [config[i] for i in valid]) if valid else []
        for i, out in zip(valid, outputs):
            slots[i] = out
        return slots

    # ------------------------------------------------------------------------------ stream
    def stream(
        self, input: ChainInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        """Yield ``{"step": ...}`` per latent step as it happens, then the full output."""
        yield from self._transform_stream_with_config(iter([input]), self._stream, config, **kwargs)

    def _stream(
        self,
        inputs: Iterator[ChainInput],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> Iterator[dict[str, Any]]:
        question = self._question(next(inputs))
        searcher, opts = self._prepare()
        on_token = lambda _row, text: dispatch(TOKEN_EVENT, {"text": text}, config)  # noqa: E731
        texts: dict[int, tuple[Any, Any]] = {}
        for item in drive(self.model, [question], searcher, opts, on_token=on_token):
            if isinstance(item, LoopOutcome):
                yield self._output(item.results[0], item.hits[0])
                continue
            dispatch(item[1], item[2], config)
            if (chunk := _step_chunk(item[1], item[2], texts)) is not None:
                yield chunk

    async def astream(
        self, input: ChainInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Async :meth:`stream`."""

        async def one() -> AsyncIterator[ChainInput]:
            yield input

        async for chunk in self._atransform_stream_with_config(
            one(), self._astream, config, **kwargs
        ):
            yield chunk

    async def _astream(
        self,
        inputs: AsyncIterator[ChainInput],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> AsyncIterator[dict[str, Any]]:
        question = self._question(await anext(inputs))
        searcher, opts = self._prepare()
        tokens = _TokenRelay([config])
        texts: dict[int, tuple[Any, Any]] = {}
        items = adrive(self.model, [question], searcher, opts, on_token=tokens)
        try:
            async with aclosing(items):  # close the loop now if the consumer stops early
                async for item in items:
                    await tokens.flush()  # answer tokens first, in order
                    if isinstance(item, LoopOutcome):
                        yield self._output(item.results[0], item.hits[0])
                        continue
                    await adispatch(item[1], item[2], config)
                    if (chunk := _step_chunk(item[1], item[2], texts)) is not None:
                        yield chunk
        except GenerationStopped:
            await tokens.flush()  # the handler error that ended the answer, not this one
            raise
        finally:
            tokens.stop()  # a no-op once the answer is done


def _step_chunk(
    name: str, data: dict[str, Any], texts: dict[int, tuple[Any, Any]]
) -> dict[str, Any] | None:
    """The stream chunk of a step event (the step's entry of the output's ``steps``); thought
    events (which come first) are remembered for it."""
    if name == THOUGHT_EVENT:
        texts[data["step"]] = (data["thought"], data["subquery"])
    if name != STEP_EVENT:
        return None
    thought, subquery = texts.get(data["step"], (None, None))
    return {"step": {**data, "thought": thought, "subquery": subquery}}


class _TokenRelay:
    """An ``on_token`` for the worker thread the forward passes run in: it dispatches each answer
    token as ``latentrag_token`` on the event loop, in order, without waiting there. (Waiting
    deadlocked: a plain callback handler runs in the loop's default thread pool, which the
    worker threads queued on the model lock could fill.) Await :meth:`flush` before anything
    that must follow the tokens. A handler that raises (``raise_error``) ends the answers at
    their next token, and :meth:`flush` re-raises its error."""

    def __init__(self, configs: list[RunnableConfig]) -> None:
        self._loop = asyncio.get_running_loop()
        self._configs = configs
        self._last: asyncio.Task[None] | None = None
        self._stopped = False

    def __call__(self, row: int, text: str) -> None:
        if self._stopped:  # the call was cancelled: end the answer in the worker thread
            raise GenerationStopped("the caller stopped waiting for this answer")
        self._loop.call_soon_threadsafe(self._queue, row, text)  # runs in call order

    def stop(self) -> None:
        """End the answer at its next token (the call was cancelled or its stream closed); tokens
        queued but not yet dispatched are dropped."""
        self._stopped = True

    def _queue(self, row: int, text: str) -> None:
        self._last = self._loop.create_task(self._send(self._last, row, text))

    async def _send(self, before: asyncio.Task[None] | None, row: int, text: str) -> None:
        if before is not None:
            await before
        if self._stopped:  # no token reaches a callback after its call has ended
            return
        try:
            await adispatch(TOKEN_EVENT, {"text": text}, self._configs[row])
        except BaseException:
            self._stopped = True  # a handler raised: end the answers now (flush re-raises)
            raise

    async def flush(self) -> None:
        """Wait until every token queued so far has been dispatched (re-raising its error)."""
        await asyncio.sleep(0)  # let queue callbacks that are already due create their tasks
        if self._last is not None:
            await self._last

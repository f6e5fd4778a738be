"""``LatentRAGChain``: question -> answer, source documents and steps, as a LangChain Runnable.

It replaces a retrieval chain (retriever + prompt + LLM) with one LatentRAG model: the model
reasons and searches the vector store in latent space, then writes the answer. With a LatentRAG
service (``latentrag serve``), ``LatentRAGChain(model="http://host:8000")`` answers there, over
the service's store. It works as a
LangGraph node (input ``{"question": ...}``, output merged into the state) and as an agent
tool (:meth:`LatentRAGChain.as_tool`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.vectorstores import VectorStore
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ..engine import RequestHandle, question_prompt
from ..live import check_question, is_remote, resolve_model, submit
from ..model import LatentRAG
from ..results import LatentRAGResult
from ._run import Run, check_target
from ._store_adapter import StoreSearcher, check_store
from .tool_output import TOOL_DESCRIPTION, tool_content

if TYPE_CHECKING:
    from ..serve.client import RemoteLatentRAG

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
         "forward_passes": int, "input_tokens": int, "output_tokens": int,
         "batch_size": float}  # mean questions per forward pass it took part in

    ``stream``/``astream`` yield ``{"step": {...}}`` for each latent step as it happens (the
    step's entry of ``steps``), then the output above as the last chunk.

    Every call runs on the model's engine (``model.engine``): calls from any number of threads
    or tasks, and the questions of ``batch``/``abatch``, share forward passes; a call waiting
    for the store holds up no other. Cancelling a call (or closing its stream) ends its answer
    at the next token.

    Events (custom callback events, see :mod:`latentrag_plugins.langchain.events`):
    ``latentrag_step`` per latent step, ``latentrag_thought`` per step with ``decode=True`` (just
    before the step's ``latentrag_step``), and ``latentrag_token`` per piece of answer text.

    An empty store (or a search that finds nothing) gives steps without documents: the model
    answers from the question alone and ``source_documents`` is ``[]``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any = Field(
        repr=False, description="LatentRAG model, checkpoint path, or LatentRAG service URL."
    )
    vectorstore: VectorStore | None = Field(
        default=None, description="Store built with LatentRAGEmbeddings (not with a service)."
    )
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
    def _load_model(cls, value: Any) -> LatentRAG | RemoteLatentRAG:
        return resolve_model(value)

    @model_validator(mode="after")
    def _check_store(self) -> LatentRAGChain:
        self.top_k = self.model.config.top_k if self.top_k is None else self.top_k
        self.max_steps = self.model.config.max_steps if self.max_steps is None else self.max_steps
        self._dim_checked = check_target(self.model, self.vectorstore, self.search_kwargs)
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

    def _runs(self, configs: list[RunnableConfig]) -> list[Run]:
        if not self._dim_checked:
            self._dim_checked = check_store(self.vectorstore, self.model)
        searcher = None
        if self.vectorstore is not None:
            searcher = StoreSearcher(self.vectorstore, self.search_kwargs)
        return [Run(searcher, config) for config in configs]

    def _options(self) -> dict[str, Any]:
        return dict(
            top_k=self.top_k, max_steps=self.max_steps, min_steps=self.min_steps,
            decode=self.decode, final_thought=self.decode,
        )  # fmt: skip

    def _output(self, result: LatentRAGResult, run: Run) -> dict[str, Any]:
        return {
            "answer": result.answer,
            "source_documents": run.documents(result, decode=self.decode),
            "steps": run.steps(result),
            "timings_ms": result.timings_ms.model_dump(),
            "forward_passes": result.forward_passes,
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "batch_size": result.batch_size,
        }

    def _parse_all(self, inputs: list[Any]) -> list[Any]:
        """Each input's question, or the ValueError it raises (empty, or too long: one such
        input fails, not its whole batch)."""
        slots: list[Any] = []
        for value in inputs:
            try:
                question = self._question(value)
                if not is_remote(self.model):  # a service checks it against its model
                    question_prompt(self.model, question)
                slots.append(question)
            except ValueError as exc:
                slots.append(exc)
        return slots

    # ------------------------------------------------------------------------------ invoke
    def invoke(
        self, input: ChainInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Answer one question."""
        return self._call_with_config(self._invoke, input, config, **kwargs)

    def _invoke(
        self, input: ChainInput, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> dict[str, Any]:
        return self._batch([input], [run_manager], [config], single=True)[0]

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
        return (await self._abatch([input], [run_manager], [config], single=True))[0]

    # ------------------------------------------------------------------------------ batch
    def batch(
        self,
        inputs: list[ChainInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Answer several questions, sharing forward passes (one output per input)."""
        return self._batch_with_config(
            self._batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    def _batch(
        self,
        inputs: list[ChainInput],
        run_manager: list[CallbackManagerForChainRun],
        config: list[RunnableConfig],
        single: bool = False,
    ) -> list[Any]:
        slots, sent = self._send(inputs, config, single, asynchronous=False)
        try:
            for i, run, handle in sent:
                try:
                    slots[i] = self._output(handle.result(on_event=run.dispatch), run)
                except Exception as exc:  # this input fails alone
                    if single:
                        raise
                    slots[i] = exc
        finally:
            for _, _, handle in sent:
                handle.cancel()  # those still running, if a callback raised
        return slots

    def _send(
        self, inputs: list[Any], config: list[RunnableConfig], single: bool, asynchronous: bool
    ) -> tuple[list[Any], list[tuple[int, Run, RequestHandle]]]:
        """Each input's question (or its error, in ``slots``), and for the valid ones their
        index, run and handle, all sent at once."""
        slots = [self._question(inputs[0])] if single else self._parse_all(inputs)
        valid = [i for i, s in enumerate(slots) if isinstance(s, str)]
        runs = self._runs([config[i] for i in valid])
        searches = [r.asearch if asynchronous else r.search for r in runs]
        handles = submit(self.model, [slots[i] for i in valid], searches, **self._options())
        return slots, list(zip(valid, runs, handles))

    async def abatch(
        self,
        inputs: list[ChainInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Async :meth:`batch`: the store searched with its async API."""
        return await self._abatch_with_config(
            self._abatch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    async def _abatch(
        self,
        inputs: list[ChainInput],
        run_manager: list[AsyncCallbackManagerForChainRun],
        config: list[RunnableConfig],
        single: bool = False,
    ) -> list[Any]:
        slots, sent = self._send(inputs, config, single, asynchronous=True)
        try:
            for i, run, handle in sent:
                try:
                    slots[i] = self._output(await handle.aresult(on_event=run.adispatch), run)
                except Exception as exc:  # this input fails alone
                    if single:
                        raise
                    slots[i] = exc
        finally:
            for _, _, handle in sent:
                handle.cancel()  # those still running, if cancelled or a callback raised
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
        (run,) = self._runs([config])
        (handle,) = submit(self.model, [question], [run.search], **self._options())
        for event in handle.events():  # closing the stream cancels the request
            run.dispatch(event)
            if (chunk := run.step_chunk(event)) is not None:
                yield chunk
        yield self._output(handle.result(), run)

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
        (run,) = self._runs([config])
        (handle,) = submit(self.model, [question], [run.asearch], **self._options())
        async for event in handle.aevents():  # closing the stream cancels the request
            await run.adispatch(event)
            if (chunk := run.step_chunk(event)) is not None:
                yield chunk
        yield self._output(await handle.aresult(), run)

    # ------------------------------------------------------------------------------ tool
    def as_tool(
        self,
        args_schema: type[BaseModel] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        arg_types: dict[str, type] | None = None,
    ) -> BaseTool:
        """This chain as an agent tool: the agent's LLM gets the answer and a short list of
        the sources it came from (titles and ids, to cite); the whole output dict is the tool
        message's ``artifact``. Events reach the tool run's callbacks.

        Args:
            args_schema: Ignored unless given: the input is ``{"question": str}``.
            name: Tool name (default ``"latentrag"``).
            description: Tool description shown to the agent's LLM.
            arg_types: Not used (the input schema is fixed).
        """
        chain = self

        def answer(question: str, config: RunnableConfig) -> tuple[str, dict[str, Any]]:
            out = chain.invoke({"question": question}, config)
            return tool_content(out), out

        async def aanswer(question: str, config: RunnableConfig) -> tuple[str, dict[str, Any]]:
            out = await chain.ainvoke({"question": question}, config)
            return tool_content(out), out

        return StructuredTool.from_function(
            func=answer,
            coroutine=aanswer,
            name=name or "latentrag",
            description=description or TOOL_DESCRIPTION,
            args_schema=args_schema or LatentRAGChainInput,
            response_format="content_and_artifact",
        )

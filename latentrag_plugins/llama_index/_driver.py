"""Drive the latent loop against a LlamaIndex vector retriever, sync or async, emitting events.

The loop itself is :func:`latentrag_plugins.inference.latent_loop`. :meth:`LatentDriver.plan` wraps
it in a second generator that yields *effects*: :class:`Compute` (model forward passes) and
:class:`Search` (a ``QueryBundle`` for the index's vector retriever). The sync runner executes them
in place; the async runner moves model work to a worker thread and awaits ``aretrieve``. Events are
emitted by the plan itself, inside the caller's span: in the async runner on the event-loop
thread, in a streaming engine's worker thread there.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from llama_index.core.instrumentation import Dispatcher
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from ..errors import StoreError
from ..inference import latent_loop
from ..live import LiveDecoder, check_question, model_lock, resolve_model
from ..results import LatentRAGResult, RetrievedDoc, Step, Timings, titled
from .events import LatentStepEvent, LatentThoughtEvent, emit
from .manifest import check_index

if TYPE_CHECKING:
    pass

STEP_KEY, RANK_KEY, SUBQUERY_KEY = "latentrag_step", "latentrag_rank", "latentrag_subquery"


@dataclass
class Compute:
    """Model work (forward passes); the async runner runs it in a worker thread."""

    fn: Callable[[], Any]


@dataclass
class Search:
    """One latent step's search through the index's vector retriever."""

    bundle: QueryBundle
    step: int


@dataclass
class RunState:
    """What a run has found so far (the streaming engine reads ``nodes`` while it answers)."""

    nodes: list[NodeWithScore] = field(default_factory=list)
    empty: bool = False  # the first search found nothing: the index is empty


# index.as_retriever arguments the adapters set themselves, and why
_OWN_RETRIEVER_ARGS = {
    "similarity_top_k": "the documents per latent step are top_k (the retriever's own "
    "similarity_top_k cuts the union of all steps)",
    "callback_manager": "the index passes its own; set it on the index",
    "node_ids": "the index passes its own",
    "object_map": "the index passes its own",
}


def to_doc(nws: NodeWithScore) -> RetrievedDoc:
    """A LlamaIndex node as the loop's document (a ``title`` metadata field leads the text)."""
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
    node.excluded_llm_metadata_keys = list(
        dict.fromkeys([*node.excluded_llm_metadata_keys, *extra])
    )
    node.excluded_embed_metadata_keys = list(
        dict.fromkeys([*node.excluded_embed_metadata_keys, *extra])
    )
    return NodeWithScore(node=node, score=nws.score)


def _advance(gen: Generator, value: Any) -> tuple[str, Any]:
    """Resume the latent loop; StopIteration cannot cross a thread boundary, so it is returned."""
    try:
        return "search", (next(gen) if value is None else gen.send(value))
    except StopIteration as stop:
        return "done", stop.value


class LatentDriver:
    """Runs LatentRAG over a ``VectorStoreIndex``: one vector search per latent step.

    Args:
        model: The LatentRAG model (or checkpoint path).
        index: A ``VectorStoreIndex`` built with the model's document tower (checked).
        top_k: Nodes per latent step (default: the model's ``config.top_k``).
        max_steps: Most retrieval steps, at least 1 (default: ``config.max_steps``, at least 1).
        decode: Decode each step's latent thought and subquery; the subquery becomes the
            ``query_str`` of the step's ``QueryBundle``.
        retriever_kwargs: Extra ``index.as_retriever`` arguments (``filters``, ...).
    """

    def __init__(
        self,
        model: Any,
        index: Any,
        *,
        top_k: int | None = None,
        max_steps: int | None = None,
        decode: bool = False,
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
        self.decode = decode
        self.vector_retriever = index.as_retriever(similarity_top_k=self.top_k, **extra)
        self._lock = model_lock(self.model)

    # ------------------------------------------------------------------------------ the plan
    def plan(
        self,
        question: str,
        dispatcher: Dispatcher,
        *,
        generate_answer: bool,
        on_token: Callable[[int, str], None] | None = None,
        state: RunState | None = None,
        caller: str = "LatentRAG",
    ) -> Generator[Compute | Search, Any, tuple[LatentRAGResult, RunState]]:
        """The effects of answering ``question``; validates the question now (errors name
        ``caller``), runs lazily."""
        check_question(question, caller)
        return self._plan(question, dispatcher, generate_answer, on_token, state or RunState())

    def _plan(
        self,
        question: str,
        dispatcher: Dispatcher,
        generate_answer: bool,
        on_token: Callable[[int, str], None] | None,
        state: RunState,
    ) -> Generator[Compute | Search, Any, tuple[LatentRAGResult, RunState]]:
        model, t_start = self.model, time.perf_counter()
        gen = latent_loop(
            model,
            [question],
            max_steps=self.max_steps,
            top_k=self.top_k,
            min_steps=1,
            generate_answer=generate_answer,
            on_token=on_token,
            final_thought=self.decode,
        )
        seen: set[str] = set()
        decoder = LiveDecoder(model, 1) if self.decode else None
        try:
            kind, value = yield Compute(partial(_advance, gen, None))
            while kind == "search":
                req = value
                thought = subquery = None
                if decoder is not None:
                    ((_, data),) = yield Compute(partial(decoder.step, req))
                    thought, subquery = data["thought"], data["subquery"]
                    emit(
                        dispatcher,
                        LatentThoughtEvent(
                            question=question, step=req.step, thought=thought, subquery=subquery
                        ),
                    )
                bundle = QueryBundle(
                    query_str=subquery or question, embedding=req.embeddings[0].tolist()
                )
                found: list[NodeWithScore] = yield Search(bundle, req.step)
                emit(
                    dispatcher,
                    LatentStepEvent(
                        question=question,
                        step=req.step,
                        action="retrieve",
                        node_ids=[n.node.node_id for n in found],
                        scores=[n.score for n in found],
                    ),
                )
                if req.step == 0 and not found:
                    state.empty = True
                    step = Step(index=0, action="retrieve", thought=thought, subquery=subquery)
                    total = (time.perf_counter() - t_start) * 1e3
                    live_ms, passes = (decoder.live_ms, decoder.passes) if decoder else (0.0, 0)
                    return LatentRAGResult(
                        answer="",
                        steps=[step],
                        timings_ms=Timings(decode=live_ms, total=total),
                        forward_passes=1 + passes,
                    ), state
                for rank, nws in enumerate(found):
                    if nws.node.node_id not in seen:
                        seen.add(nws.node.node_id)
                        state.nodes.append(annotate(nws, req.step, rank, subquery))
                kind, value = yield Compute(partial(_advance, gen, [[to_doc(n) for n in found]]))
        finally:
            with contextlib.suppress(ValueError):  # still running in a cancelled worker thread
                gen.close()
        result: LatentRAGResult = value[0]
        if decoder is not None:
            yield Compute(partial(decoder.finish, [result]))
        last = result.steps[-1]
        if decoder is not None:
            emit(
                dispatcher,
                LatentThoughtEvent(
                    question=question, step=last.index, thought=last.thought, subquery=last.subquery
                ),
            )
        emit(
            dispatcher,
            LatentStepEvent(
                question=question, step=last.index, action=last.action, forced=last.forced
            ),
        )
        return result, state

    # ------------------------------------------------------------------------------ runners
    def _compute(self, effect: Compute) -> Any:
        with self._lock:
            return effect.fn()

    def _search_error(self, effect: Search, exc: Exception) -> StoreError:
        store = type(getattr(self.index, "vector_store", None)).__name__
        return StoreError(
            f"{store} search failed at latent step {effect.step} (top_k={self.top_k}, "
            f"{self.model.dim}-dim query from {self.model.encoder_id!r}): "
            f"{type(exc).__name__}: {exc}"
        )

    def run_plan(
        self,
        plan: Generator,
        search: Callable[[QueryBundle], list[NodeWithScore]] | None = None,
    ) -> tuple[LatentRAGResult, RunState]:
        """Execute a plan synchronously; ``search`` (default: the vector retriever's sync
        ``retrieve``) runs its searches."""
        search = search or self.vector_retriever.retrieve
        try:
            effect = next(plan)
            while True:
                if isinstance(effect, Compute):
                    value = self._compute(effect)
                else:
                    try:
                        value = search(effect.bundle)
                    except Exception as exc:
                        raise self._search_error(effect, exc) from exc
                effect = plan.send(value)
        except StopIteration as stop:
            return stop.value
        finally:
            plan.close()

    async def arun_plan(self, plan: Generator) -> tuple[LatentRAGResult, RunState]:
        """Execute a plan on the running event loop; model work goes to a worker thread."""
        try:
            effect = next(plan)
            while True:
                if isinstance(effect, Compute):
                    value = await asyncio.to_thread(self._compute, effect)
                else:
                    try:
                        value = await self.vector_retriever.aretrieve(effect.bundle)
                    except Exception as exc:
                        raise self._search_error(effect, exc) from exc
                effect = plan.send(value)
        except StopIteration as stop:
            return stop.value
        finally:
            plan.close()

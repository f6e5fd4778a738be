"""Rounds of the latent loop over every request in flight (continuous batching, no threads).

Each :meth:`LatentScheduler.round` runs the step passes of the requests ready for a step (new
prompts and requests whose documents came back, whatever step they are at), grouped by what
they feed so that little is padding, and one token pass for every answering request. Requests
join at the next round
and leave when they end; a request waiting for its store takes no part. Who searches, and when,
is the caller's business: :func:`~latentrag_plugins.engine.loop.latent_loop` searches in place,
the :class:`~latentrag_plugins.engine.Engine` in worker threads and event loops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..context import BatchedContext
from ..decoding import decode_items, logit_lens_tokens
from ..results import RetrievedDoc, Step
from ..runtime import check_questions
from .answer_text import AnswerText
from .events import Event, StepEvent, ThoughtEvent
from .in_flight import InFlight
from .passes import plan_step, step_pass, token_pass
from .prompt import question_prompt
from .request import LatentRequest, Phase, RequestOptions, SearchJob, piece_sink

if TYPE_CHECKING:
    from ..model import LatentRAG


class LatentScheduler(InFlight):
    """The requests in flight on one model, and the passes that move them.

    Args:
        model: The model.
    """

    def __init__(self, model: LatentRAG) -> None:
        super().__init__(model.llm, model.ids.pad, model)
        self.model = model
        self.warmup_options = {"min_steps": 1, "max_steps": 1}
        self._held: set[int] = set()  # ids of requests whose step was held back last round

    def new_requests(
        self,
        questions: list[str],
        options: dict[str, Any],
        emits: list[Callable[[Event], None]],
        searches: list[Any],
        loops: list[Any],
    ) -> list[LatentRequest]:
        """Requests for ``questions``, all checked before any is made.

        Raises:
            ValueError: An empty or too long question, or a bad option.
        """
        opts = RequestOptions.resolve(self.model.config, **options)
        check_questions(questions)
        prompts = [question_prompt(self.model, q) for q in questions]
        tokenizer = self.model.tokenizer
        return [
            LatentRequest(p, q, opts, AnswerText(tokenizer, piece_sink(emit)), emit, fn, loop)
            for q, p, emit, fn, loop in zip(questions, prompts, emits, searches, loops)
        ]

    def round(self) -> tuple[list[SearchJob], list[LatentRequest]]:
        """Run the step passes and one token pass over the requests ready for them.

        Returns:
            The searches to run, and the requests that ended (their ``result`` is set).
        """
        with self.evaluating():
            jobs = self._steps([r for r in self.requests if r.phase is Phase.FEED])
            answering = [r for r in self.requests if r.phase is Phase.GENERATE]
            ended: list[LatentRequest] = []
            if answering:
                group = self.group if self.grouped() else None
                ended, fed = token_pass(self.model, answering, group)
                if fed:
                    self.stats.count(fed)
            for r in ended:
                r.phase = Phase.DONE
            done = [r for r in self.requests if r.phase is Phase.DONE]
            for r in done:
                self._finish(r)
        return jobs, done

    def end(self, request: LatentRequest) -> None:
        """End a request at its search (the search raised ``EndRequest``): no answer."""
        request.found([], [])
        self.remove(request)
        request.finish()

    def deliver(self, request: LatentRequest, docs: list[RetrievedDoc]) -> None:
        """Hand a request the documents of its search; it feeds them at its next step."""
        cfg = self.model.config
        budget = (
            cfg.max_context_tokens
            - request.kv.pos
            - cfg.n_think
            - cfg.n_query
            - (cfg.max_answer_tokens + 2)
        )
        request.found(docs, self.model.prompts.information(docs, budget, cfg.max_doc_tokens))

    def _steps(self, stepping: list[LatentRequest]) -> list[SearchJob]:
        if not stepping:
            return []
        plans = {id(r): plan_step(self.model, r, self._can_branch()) for r in stepping}
        for r in stepping:
            if plans[id(r)] is None:  # retrieval-only, at its last step: nothing left to read
                r.steps.append(Step(index=r.step, action="answer", forced=True))
                r.phase = Phase.DONE
                r.emit(StepEvent(r.step, "answer", True))
        ready = [r for r in stepping if plans[id(r)] is not None]
        groups = by_length(ready, lambda r: len(r.pending) + len(plans[id(r)].slots))
        groups, self._held = hold_small(groups, self._held)
        fed = [r for group in groups for r in group]
        jobs = []
        for group in groups:
            jobs += step_pass(self.model, group, [plans[id(r)] for r in group])
            self.stats.count(len(group))
        decoding = [r for r in fed if r.options.decode]
        if decoding:
            self._decode(decoding)
        for r in fed:
            step = r.steps[-1]
            if r.options.decode:
                r.emit(ThoughtEvent(step.index, step.action, step.thought, step.subquery))
            if step.action == "answer":
                r.emit(StepEvent(step.index, "answer", step.forced))
        return jobs

    def _can_branch(self) -> bool:
        return BatchedContext(self.model.llm, 1, self.model.ids.pad).can_branch

    def _decode(self, reqs: list[LatentRequest]) -> None:
        """Decode the new step's thought (and subquery) of every request, in one generation."""
        items, where = [], []
        for r in reqs:
            lat, step = r.latents[-1], r.steps[-1]
            for kind, key in (("thought", "think"), ("subquery", "query")):
                if key in lat:
                    items.append((kind, lat[key]))
                    where.append((step, kind))
        t0 = time.perf_counter()
        texts, passes = decode_items(self.model, items)
        ms = (time.perf_counter() - t0) * 1e3
        for (step, kind), text in zip(where, texts):
            setattr(step, kind, text)
        for r in reqs:
            r.stages["decode"] += ms
            r.passes += passes

    def _finish(self, request: LatentRequest) -> None:
        self.requests.remove(request)
        result = request.finish()
        if request.options.logit_lens:
            logit_lens_tokens(self.model, [result])


def by_length(
    reqs: list[LatentRequest], length: Callable[[LatentRequest], int], spread: float = 2.0
) -> list[list[LatentRequest]]:
    """Requests grouped for step passes so that padding stays small: a group's longest chunk is
    at most ``spread`` times its shortest (a prompt is fed apart from a step's documents, which
    are several times longer, instead of being padded to them)."""
    groups: list[list[LatentRequest]] = []
    for r in sorted(reqs, key=length):
        if groups and length(r) <= spread * length(groups[-1][0]):
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def hold_small(
    groups: list[list[LatentRequest]], held: set[int]
) -> tuple[list[list[LatentRequest]], set[int]]:
    """The step groups to run this round, and the ids of the requests held back to the next.

    Of several groups, the largest runs and so does any group with a request held back last
    round; the others wait one round, when requests that come back from their stores join
    them: fewer, fuller passes. No request waits twice in a row.
    """
    if len(groups) < 2:
        return groups, set()
    largest = max(groups, key=len)
    run = [g for g in groups if g is largest or any(id(r) in held for r in g)]
    waiting = {id(r) for g in groups if all(g is not x for x in run) for r in g}
    return run, waiting

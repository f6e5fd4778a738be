"""The explicit agent on the engine: token-level continuous batching of Search-R1 turns.

Each round runs one wide pass (every request with ids to feed: prompts, documents with the last
token of the turn before, forced ``<answer>`` tags) and one token pass (every request writing a
turn: it picks its next token and feeds it). Requests join and leave between passes, as in
:class:`~latentrag_plugins.engine.scheduler.LatentScheduler`, so LatentRAG and its baseline are
compared on the same machinery.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..engine.in_flight import InFlight
from ..engine.passes import elapsed_ms
from ..engine.request import Phase, SearchJob
from ..engine.rows import open_context, split
from ..runtime import check_questions
from . import search_r1 as sr1
from .explicit_force import ExplicitForce, ForceTemplate
from .explicit_requests import TAIL, ExplicitOptions, ExplicitRequest, reserve, stop_kind

if TYPE_CHECKING:
    from .explicit import ExplicitAgent


class ExplicitScheduler(InFlight):
    """The explicit agent's requests in flight and the passes that move them.

    Args:
        agent: The agent.
    """

    def __init__(self, agent: ExplicitAgent) -> None:
        super().__init__(agent.llm, agent.pad_id, agent.llm)
        self.agent = agent
        # a short forced search turn, then a short answer turn: every kind of pass, quickly
        self.warmup_options = {"max_turns": 1, "force": [ExplicitForce((8, 8), (6,), 4)]}
        self._templates: dict[bool, ForceTemplate] = {}

    # ------------------------------------------------------------------ requests
    def new_requests(
        self,
        questions: list[str],
        options: dict[str, Any],
        emits: list[Callable[..., None]],
        searches: list[Any],
        loops: list[Any],
    ) -> list[ExplicitRequest]:
        """Requests for ``questions`` (options ``max_turns``, ``top_k`` and ``force``: one
        :class:`ExplicitForce` per question, or None), all checked before any is made.

        Raises:
            ValueError: An empty or too long question, or a bad option.
        """
        cfg = self.agent.config
        unknown = set(options) - {"max_turns", "top_k", "force"}
        if unknown:
            raise ValueError(f"unknown options for the explicit agent: {sorted(unknown)}")
        max_turns = options.get("max_turns")
        max_turns = cfg.max_turns if max_turns is None else int(max_turns)
        top_k = cfg.top_k if options.get("top_k") is None else int(options["top_k"])
        if max_turns < 0 or top_k < 1:
            raise ValueError("max_turns must be >= 0 and top_k >= 1")
        forces = _forces(options.get("force"), len(questions))
        check_questions(questions)
        prompts = [self._prompt(q) for q in questions]
        out = []
        for q, prompt, force, emit, fn, loop in zip(
            questions, prompts, forces, emits, searches, loops
        ):
            turns = max_turns if force is None else max(max_turns, force.searches)
            opts = ExplicitOptions(max_turns=turns, top_k=top_k, force=force)
            out.append(ExplicitRequest(prompt, q, opts, emit, fn, loop))
        return out

    def _prompt(self, question: str) -> list[int]:
        cfg = self.agent.config
        ids = self.agent.prompt_ids(question)
        need = len(ids) + cfg.max_turn_tokens + reserve(self.agent)
        if need > cfg.max_context_tokens:
            raise ValueError(
                f"question is too long: it needs {need} tokens with one turn, over the "
                f"max_context_tokens budget of {cfg.max_context_tokens}: {question[:60]!r}..."
            )
        return ids

    def deliver(self, request: ExplicitRequest, docs: list[Any]) -> None:
        """Hand a request the documents of its search."""
        request.found(self.agent, docs)

    def end(self, request: ExplicitRequest) -> None:
        """End a request at its search (``EndRequest``): no answer."""
        self.remove(request)
        request.finish()

    # ------------------------------------------------------------------ rounds
    def round(self) -> tuple[list[SearchJob], list[ExplicitRequest]]:
        """Run one wide pass and one token pass over the requests ready for them.

        Returns:
            The searches to run, and the requests that ended (their ``result`` is set).
        """
        jobs: list[SearchJob] = []
        with self.evaluating():
            feeding = [r for r in self.requests if r.phase is Phase.FEED]
            if feeding:
                self._feed(feeding)
            writing = [r for r in self.requests if r.phase is Phase.GENERATE]
            if writing:
                jobs = self._write(writing)
        done = [r for r in self.requests if r.phase is Phase.DONE]
        for r in done:
            self.requests.remove(r)
            if r.error is None:
                r.finish()
        return jobs, done

    def _feed(self, reqs: list[ExplicitRequest]) -> None:
        """Start each request's turn and feed its pending ids, in one pass."""
        ready = []
        for r in reqs:
            try:
                r.start_turn(self.agent, self._plan(r))
                ready.append(r)
            except ValueError as exc:  # a forced plan that cannot fit: this request fails
                r.error, r.phase = exc, Phase.DONE
        if not ready:
            return
        stages = [_first_stage(r) for r in ready]
        chunks = [r.carry + r.pending for r in ready]
        for r in ready:
            r.input_tokens += len(r.pending)
            r.carry, r.pending = [], []
        self._pass(ready, chunks, stages)
        for r in ready:
            r.phase = Phase.GENERATE
            if r.current is not None and r.current.room <= 0:
                r.current.kind = "length"  # no room left: the turn ends unwritten
                self._ended(r, [])

    def _plan(self, r: ExplicitRequest) -> Any:
        """A forced request's plan for its next turn (None when free or answering)."""
        force = r.options.force
        if force is None or r.answer_mode:
            return None
        model_filler = force.filler == "model"
        if model_filler not in self._templates:
            self._templates[model_filler] = ForceTemplate(self.agent, model_filler)
        template = self._templates[model_filler]
        if r.turn < force.searches:
            return template.search_turn(force.thought_tokens[r.turn], force.subquery_tokens[r.turn])
        return template.answer_turn(force.thought_tokens[r.turn], force.answer_tokens)

    def _write(self, reqs: list[ExplicitRequest]) -> list[SearchJob]:
        """Each request picks its next token; those whose turn goes on feed it."""
        picks = self._pick(reqs)
        feeding, chunks, searching = [], [], []
        for r, pick in zip(reqs, picks):
            tok = self._take(r, pick)
            if tok is None:
                self._ended(r, searching)
                continue
            t = r.current
            assert t is not None
            if len(t.tokens) >= t.room:
                t.kind = "length"
                self._ended(r, searching)
                continue
            t.fed += 1
            feeding.append(r)
            chunks.append([tok])
        stages = ["answer" if r.current.in_answer else "reasoning" for r in feeding]
        if self.grouped():
            self._group_pass(feeding, chunks, stages)  # also lets the others out
        elif feeding:
            self._pass(feeding, chunks, stages)
        return self._search_jobs(searching)

    def _take(self, r: ExplicitRequest, pick: int) -> int | None:
        """Append the token ``r`` writes (its pick, or its plan's); None when the turn ends."""
        agent, t = self.agent, r.current
        assert t is not None
        if t.plan is not None:
            seq, marks = t.plan
            slot = seq[len(t.tokens)]
            tok = pick if slot is None else slot  # forced tag/filler, or the model's pick
            t.tokens.append(tok)
            # The plan decides where the turn ends, but each token still pays the stop check
            # a free turn pays, so forced runs time what real ones do.
            stop_kind(agent.decode_raw(t.tokens[-TAIL:]), r.answer_mode)
            if len(t.tokens) == len(seq):
                return None
            if "answer" in marks and len(t.tokens) >= marks["answer"][0]:
                t.in_answer = True
            return tok
        if t.quoting and r.spans is not None:
            if pick in r.spans.stop:
                t.quoting = False  # the rest of </answer> is free
            else:
                r.spans.advance(0, pick)
        if pick == agent.eos_id:
            t.kind = "eos"
            r.output_tokens += 1  # the stop token, as LatentRAG counts it
            return None
        t.tokens.append(pick)
        tail = agent.decode_raw(t.tokens[-TAIL:])
        kind = stop_kind(tail, r.answer_mode)
        if kind is not None:
            t.kind = kind
            return None
        if not t.in_answer and sr1.ANSWER in tail:
            t.in_answer = True
            t.quoting = r.spans is not None
        return pick

    def _ended(self, r: ExplicitRequest, searching: list[ExplicitRequest]) -> None:
        if r.end_turn(self.agent):
            searching.append(r)

    def _pick(self, reqs: list[ExplicitRequest]) -> list[int]:
        """Greedy next tokens (the protocol's banned ids never; quoting rows only from their
        sources)."""
        with torch.inference_mode():
            logits = torch.stack([r.logits for r in reqs])  # (b, V)
            logits[:, self.agent.banned_tensor(logits.device)] = float("-inf")
            for j, r in enumerate(reqs):
                if r.current is not None and r.current.quoting and r.spans is not None:
                    logits[j : j + 1] = r.spans.mask(logits[j : j + 1], [0])
            return logits.argmax(-1).tolist()

    def _pass(
        self, reqs: list[ExplicitRequest], chunks: list[list[int]], stages: list[str]
    ) -> None:
        """Feed one chunk per request in one forward pass; each gets its next-token logits."""
        agent = self.agent
        t0 = time.perf_counter()
        with torch.inference_mode():
            kvs = [r.kv for r in reqs]
            width = max(len(c) for c in chunks)
            ctx = open_context(agent.llm, agent.pad_id, agent.wide_llm, kvs, width)
            logits = ctx.logits(ctx.feed(chunks, keep=1)[:, -1])  # (B, V)
            for r, kv, row in zip(reqs, split(ctx), logits):
                r.kv, r.logits = kv, row
        ms = elapsed_ms(t0, agent.device)
        self.stats.count(len(reqs))
        for r, stage in zip(reqs, stages):
            r.took_part(stage, ms, len(reqs))

    def _group_pass(
        self, reqs: list[ExplicitRequest], chunks: list[list[int]], stages: list[str]
    ) -> None:
        """A token pass in the group's preallocated cache; requests no longer writing leave."""
        t0 = time.perf_counter()
        self.group.hold(reqs)
        if not reqs:
            return
        self.group.feed({id(r): c[0] for r, c in zip(reqs, chunks)})
        ms = elapsed_ms(t0, self.agent.device)
        self.stats.count(len(reqs))
        for r, stage in zip(reqs, stages):
            r.took_part(stage, ms, len(reqs))

    def _search_jobs(self, reqs: list[ExplicitRequest]) -> list[SearchJob]:
        """Embed the subqueries of the turns that search (one tower pass), as search jobs."""
        if not reqs:
            return []
        t0 = time.perf_counter()
        subqueries = [r.steps[-1].subquery or "" for r in reqs]
        emb = self.agent.doc_tower.embed_texts(subqueries, is_query=True)  # (b, dim)
        ms = (time.perf_counter() - t0) * 1e3
        jobs = []
        for r, e in zip(reqs, np.asarray(emb, dtype=np.float32)):
            r.stages["retrieval"] += ms
            jobs.append(SearchJob(r, r.turn, e, r.options.top_k))
        return jobs


def _first_stage(r: ExplicitRequest) -> str:
    if r.answer_mode:
        return "answer"
    return "prefill" if r.turn == 0 and not r.steps else "reasoning"


def _forces(force: Any, n: int) -> Sequence[ExplicitForce | None]:
    if force is None:
        return [None] * n
    forces = list(force)
    if len(forces) != n:
        raise ValueError("force needs one ExplicitForce per question")
    return forces

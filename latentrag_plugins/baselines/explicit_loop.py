"""The explicit agent's loop: Search-R1's think/search/answer turns over a reused KV cache.

Per round, every active question generates one turn greedily until ``</search>``, ``</answer>``
(text stops: the decoded tail is checked after each token), EOS or ``max_turn_tokens``. Rows that
searched embed their text subquery with the frozen document tower, search the store, and feed
``[last generated token] <information>Doc 1(Title: t) text ...</information>`` on top of the KV
cache at the start of the next round, so the history is never prefilled again (DESIGN §3).

Rows of a batch are padded and masked by :class:`~latentrag_plugins.context.BatchedContext`, so a
batch gives the same turns and answers as one-by-one runs.

The bench's *forcing mode* (:class:`~latentrag_plugins.baselines.explicit_force.ExplicitForce`)
fixes the number of searches and every generation length; see that module.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..context import BatchedContext
from ..errors import StoreError
from ..extractive import SpanConstraint, source_tokens
from ..inference import SearchRequest, search_store
from ..results import LatentRAGResult, RetrievedDoc, Step
from ..runtime import StageClock, check_questions, check_store, evaluating
from . import search_r1 as sr1
from .explicit_force import ExplicitForce, ForceTemplate

if TYPE_CHECKING:
    from .explicit import ExplicitAgent

_TAIL = 16  # tokens decoded to look for a stop string


@dataclass
class _Row:
    """Per-question state of the loop."""

    pending: list[int]  # input ids (prompt, documents, tags) to feed at the next round
    carry: list[int] = field(default_factory=list)  # generated ids not fed yet
    steps: list[Step] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # the context as the model saw it
    sources: list[int] = field(default_factory=list)  # prompt and documents: what answers quote
    done: bool = False
    answer: str = ""
    passes: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class _Turn:
    """What one row generated in one round."""

    tokens: list[int] = field(default_factory=list)
    kind: str = "length"  # "search" | "answer" | "eos" | "length"
    fed: int = 0  # forward passes in which the row fed a generated token
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # forced mode: text spans


@evaluating("llm")
def explicit_loop(
    agent: ExplicitAgent,
    questions: Sequence[str],
    store: Any,
    *,
    max_turns: int | None = None,
    top_k: int | None = None,
    force: Sequence[ExplicitForce] | None = None,
) -> list[LatentRAGResult]:
    """Run the explicit agent on a batch of questions over a sync store.

    Args:
        agent: The agent.
        questions: Non-empty questions.
        store: Anything with ``search(embedding, k)`` (or ``search_batch``).
        max_turns: Most searches per question (default ``config.max_turns``).
        top_k: Documents per search (default ``config.top_k``).
        force: One forced plan per question (benchmark mode), or None.

    Returns:
        One result per question; timings are those of the whole batch.
    """
    cfg = agent.config
    max_turns = cfg.max_turns if max_turns is None else max_turns
    top_k = cfg.top_k if top_k is None else top_k
    if max_turns < 0 or top_k < 1:
        raise ValueError("max_turns must be >= 0 and top_k >= 1")
    questions = list(questions)
    if not questions:
        return []
    check_questions(questions)
    if force is not None:
        force = list(force)
        if len(force) != len(questions):
            raise ValueError("force needs one ExplicitForce per question")
        max_turns = max(max_turns, max(f.searches for f in force))
    check_store(store, agent.encoder_id, agent.dim)

    reserve = cfg.max_answer_tokens + 8
    rows = [_Row(pending=agent.prompt_ids(q)) for q in questions]
    for r in rows:
        r.sources = list(r.pending)
    for q, r in zip(questions, rows):
        need = len(r.pending) + cfg.max_turn_tokens + reserve
        if need > cfg.max_context_tokens:
            raise ValueError(
                f"question is too long: it needs {need} tokens with one turn, over the "
                f"max_context_tokens budget of {cfg.max_context_tokens}: {q[:60]!r}..."
            )
    templates = {m: ForceTemplate(agent, m) for m in (False, True)} if force is not None else {}
    clock = StageClock(agent.device)
    ctx = BatchedContext(agent.llm, len(rows), agent.pad_id, agent.wide_llm)
    for turn in range(max_turns + 1):
        live = [i for i, r in enumerate(rows) if not r.done]
        if not live:
            break
        plans: dict[int, tuple[list[int | None], dict]] = {}
        if force is not None:
            for i in live:
                f = force[i]
                template = templates[f.filler == "model"]
                if turn < f.searches:
                    plans[i] = template.search_turn(f.thought_tokens[turn], f.subquery_tokens[turn])
                else:
                    plans[i] = template.answer_turn(f.thought_tokens[turn], f.answer_tokens)
        room = {}
        for i in live:
            left = cfg.max_context_tokens - _used(ctx, i, rows) - reserve
            if i in plans:  # forced turns ignore max_turn_tokens but must fit the context
                if len(plans[i][0]) > left:
                    raise ValueError(
                        f"forced turn of {len(plans[i][0])} tokens does not fit the "
                        f"max_context_tokens budget ({left} tokens left)"
                    )
                room[i] = len(plans[i][0])
            else:
                room[i] = min(cfg.max_turn_tokens, left)
        turns = _generate_round(
            agent, ctx, rows, live, room, clock, first_stage="prefill" if turn == 0 else "reasoning",
            plans=plans,
        )  # fmt: skip
        searching: list[int] = []
        subqueries: list[str] = []
        for i in live:
            r, t = rows[i], turns[i]
            if i in plans:
                thought = agent.decode(t.tokens[slice(*t.spans["thought"])])
                sub = _span_text(agent, t, "subquery")
                ans = _span_text(agent, t, "answer")
            else:
                t.kind, thought, sub, ans = classify_turn(agent.decode(t.tokens), t.kind)
            if t.kind == "answer":
                r.steps.append(Step(index=turn, action="answer", thought=thought))
                r.answer, r.done = (ans or "").strip(), True
            elif t.kind == "search" and sub and turn < max_turns:
                r.steps.append(Step(index=turn, action="retrieve", thought=thought, subquery=sub))
                searching.append(i)
                subqueries.append(sub)
            else:  # no valid action, EOS, length cap, or a search past max_turns: force the answer
                r.steps.append(Step(index=turn, action="answer", thought=thought, forced=True))
        if searching:
            with clock.stage("retrieval"):
                emb = agent.doc_tower.embed_texts(subqueries, is_query=True)  # (b, dim)
                found = search_store(store, SearchRequest(turn, searching, emb, top_k))
            if found is None or len(found) != len(searching):
                raise StoreError("the store returned no documents for some questions")
            for i, docs in zip(searching, found):
                r = rows[i]
                r.steps[-1].docs = list(docs)
                budget = (
                    cfg.max_context_tokens - _used(ctx, i, rows) - cfg.max_turn_tokens - reserve
                )
                info = agent.information_ids(docs, budget)
                if not info:  # no room left for documents and another turn: answer now
                    r.steps.append(Step(index=turn + 1, action="answer", thought=None, forced=True))
                    continue
                r.pending += info
                r.sources += info
        forced = [i for i in live if not rows[i].done and rows[i].steps[-1].action == "answer"]
        if forced:
            _forced_answer(agent, ctx, rows, forced, clock)
    for r in rows:
        r.token_ids += r.carry  # the last generated token, never fed
        r.carry = []
    timings = clock.timings()
    results = []
    for r in rows:
        res = LatentRAGResult(
            answer=r.answer,
            steps=r.steps,
            timings_ms=timings,
            forward_passes=r.passes,
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
        )
        res._token_ids = r.token_ids
        results.append(res)
    return results


def _span_text(agent: ExplicitAgent, t: _Turn, name: str) -> str | None:
    """Text of a forced turn's span (None if the turn has no such span)."""
    return agent.decode(t.tokens[slice(*t.spans[name])]) if name in t.spans else None


def classify_turn(text: str, stop: str) -> tuple[str, str | None, str | None, str | None]:
    """Read one generated turn: ``(kind, thought, subquery, answer)``.

    ``stop`` says how the turn ended: ``"search"`` / ``"answer"`` (on ``</search>`` /
    ``</answer>``), ``"eos"`` or ``"length"``. A turn cut by EOS or the length cap is read
    tolerantly: an unclosed ``<search>`` or ``<answer>`` as its last block still counts.
    """
    thought = sr1.extract_think(text)
    if stop == "search":
        return "search", thought, sr1.extract_search(text), None
    if stop == "answer":
        ans = sr1.extract_answer(text)
        if ans is None:  # "</answer>" without its opening tag: the text after the last tag
            ans = re.split(r"<[^>]*>", text.split(sr1.ANSWER_END, 1)[0])[-1].strip()
        return "answer", thought, None, ans
    blocks = sr1.parse_blocks(text)
    if blocks and blocks[-1][0] == "search" and blocks[-1][1]:
        return "search", thought, blocks[-1][1], None
    if blocks and blocks[-1][0] == "answer":
        return "answer", thought, None, blocks[-1][1]
    return stop, thought, None, None


def _used(ctx: BatchedContext, i: int, rows: list[_Row]) -> int:
    """Tokens already in row ``i``'s context plus what it will feed next."""
    return int(ctx.next_pos[i]) + len(rows[i].carry) + len(rows[i].pending)


def _feed(ctx: BatchedContext, rows: list[_Row], live: set[int] | list[int]) -> torch.Tensor:
    """Feed each live row's ``carry + pending`` in one pass; count passes and tokens.

    Returns:
        Next-token logits ``(B, V)``.
    """
    chunks = [rows[i].carry + rows[i].pending if i in live else [] for i in range(len(rows))]
    with torch.inference_mode():
        h = ctx.feed(chunks, keep=1)  # (B, 1, d)
        logits = ctx.logits(h[:, -1])  # (B, V)
    for i in live:
        r = rows[i]
        if chunks[i]:
            r.passes += 1
            r.token_ids += chunks[i]
            r.input_tokens += len(r.pending)
        r.carry, r.pending = [], []
    return logits


def _generate_round(
    agent: ExplicitAgent,
    ctx: BatchedContext,
    rows: list[_Row],
    live: list[int],
    room: dict[int, int],
    clock: StageClock,
    *,
    first_stage: str,
    plans: dict[int, tuple[list[int | None], dict]],
    answer_mode: bool = False,
) -> dict[int, _Turn]:
    """Feed each live row's pending ids, then generate greedily until every row stops.

    Forward passes run under ``reasoning`` while any row is still thinking or searching, and
    under ``answer`` once every fed row is inside its ``<answer>`` (or in ``answer_mode``).
    """
    with clock.stage(first_stage):
        logits = _feed(ctx, rows, live)
    turns = {i: _Turn() for i in live}
    active = {i for i in live if room[i] > 0}
    for i in set(live) - active:
        turns[i].kind = "length"
    in_answer = dict.fromkeys(live, answer_mode)
    spans = _answer_spans(agent, rows)
    quoting = set(live) - set(plans) if answer_mode and spans else set()
    ban = agent.banned_tensor(logits.device)
    while active:
        logits = logits.clone()
        logits[:, ban] = float("-inf")
        if spans is not None and quoting & active:
            logits = spans.mask(logits, quoting & active)
        pick = logits.argmax(-1).tolist()
        feeding: list[int] = []
        for i in sorted(active):
            t = turns[i]
            plan = plans.get(i)
            if plan is not None:
                seq, marks = plan
                slot = seq[len(t.tokens)]
                tok = pick[i] if slot is None else slot  # forced tag/filler, or the model's pick
                t.tokens.append(tok)
                # The plan decides where the turn ends, but each token still pays the stop
                # check a free turn pays, so forced runs time what real ones do.
                _stop_kind(agent.decode_raw(t.tokens[-_TAIL:]), answer_mode)
                if len(t.tokens) == len(seq):
                    t.kind, t.spans = ("search" if "subquery" in marks else "answer"), marks
                    active.discard(i)
                    continue
                if "answer" in marks and len(t.tokens) >= marks["answer"][0]:
                    in_answer[i] = True
            else:
                tok = pick[i]
                if i in quoting:
                    if tok in spans.stop:
                        quoting.discard(i)  # the rest of </answer> is free
                    else:
                        spans.advance(i, tok)
                if tok == agent.eos_id:
                    t.kind = "eos"
                    rows[i].output_tokens += 1  # the stop token, as LatentRAG counts it
                    active.discard(i)
                    continue
                t.tokens.append(tok)
                tail = agent.decode_raw(t.tokens[-_TAIL:])
                kind = _stop_kind(tail, answer_mode)
                if kind is not None:
                    t.kind = kind
                    active.discard(i)
                    continue
                if not in_answer[i] and sr1.ANSWER in tail:
                    in_answer[i] = True
                    if spans is not None:
                        quoting.add(i)
            if len(t.tokens) >= room[i]:
                t.kind = "length"
                active.discard(i)
                continue
            rows[i].carry = [tok]
            feeding.append(i)
            t.fed += 1
        if not active:
            break
        stage = "answer" if all(in_answer[i] for i in active) else "reasoning"
        with clock.stage(stage):
            logits = _feed(ctx, rows, feeding)
    for i in live:
        t = turns[i]
        rows[i].output_tokens += len(t.tokens)
        # The last generated token was not fed yet: it opens the next feed of this row.
        rows[i].carry = [t.tokens[-1]] if t.tokens and t.fed < len(t.tokens) else []
    return turns


def _answer_spans(agent: ExplicitAgent, rows: list[_Row]) -> SpanConstraint | None:
    """The extractive-answer constraint over each row's sources (None unless configured)."""
    if not agent.config.extractive_answers:
        return None
    # The first token of </answer>, with or without a space before it, ends the quote (a bare
    # space token would end it too early).
    firsts = {agent.trusted(t)[0] for t in (sr1.ANSWER_END, " " + sr1.ANSWER_END)}
    stop = {t for t in firsts if agent.decode_raw([t]).strip()}
    if agent.eos_id is not None:
        stop.add(agent.eos_id)
    return SpanConstraint([source_tokens(r.sources, agent.specials) for r in rows], stop)


def _stop_kind(tail: str, answer_mode: bool) -> str | None:
    if sr1.ANSWER_END in tail:
        return "answer"
    if not answer_mode and sr1.SEARCH_END in tail:
        return "search"
    return None


def _forced_answer(
    agent: ExplicitAgent, ctx: BatchedContext, rows: list[_Row], idx: list[int], clock: StageClock
) -> None:
    """Feed ``<answer>`` after the rows' last turn and generate the answer (max_answer_tokens)."""
    for i in idx:
        rows[i].pending += agent.answer_open_ids()
    room = dict.fromkeys(idx, agent.config.max_answer_tokens)
    turns = _generate_round(
        agent, ctx, rows, idx, room, clock, first_stage="answer", plans={}, answer_mode=True
    )
    for i in idx:
        text = agent.decode(turns[i].tokens)
        rows[i].answer = text.split(sr1.ANSWER_END, 1)[0].strip()
        rows[i].done = True


def result_docs(results: Sequence[LatentRAGResult]) -> list[list[RetrievedDoc]]:
    """All retrieved documents of each result, in step then rank order."""
    return [[d for s in r.steps for d in s.docs] for r in results]


__all__ = ["ExplicitForce", "classify_turn", "explicit_loop", "result_docs"]

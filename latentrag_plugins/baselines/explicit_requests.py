"""The explicit agent's requests: Search-R1 turns, written token by token, one question each.

A request feeds its pending ids (the prompt, or the last token of its turn with the documents
found, or ``<answer>`` when the answer is forced) in a wide pass, then generates its turn one
token per pass until ``</search>``, ``</answer>``, EOS or the turn's length cap. A search turn
embeds its subquery with the frozen document tower and waits for its store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..engine.answer_text import cased
from ..engine.events import StepEvent
from ..engine.request import Phase, Request
from ..extractive import SpanConstraint, quote_constraint
from ..results import LatentRAGResult, Step
from . import search_r1 as sr1
from .explicit_force import ExplicitForce

if TYPE_CHECKING:
    import torch

    from .explicit import ExplicitAgent

TAIL = 16  # tokens decoded to look for a stop string


@dataclass(frozen=True)
class ExplicitOptions:
    """The settings of one explicit request.

    Attributes:
        max_turns: Most searches; then the answer is forced.
        top_k: Documents per search.
        force: Benchmark mode: the forced plan of its turns, or None.
    """

    max_turns: int
    top_k: int
    force: ExplicitForce | None = None


@dataclass
class Turn:
    """What a request is generating now."""

    room: int  # most tokens of the turn
    plan: tuple[list[int | None], dict[str, tuple[int, int]]] | None = None  # forced mode
    tokens: list[int] = field(default_factory=list)
    kind: str = "length"  # how it ended: "search" | "answer" | "eos" | "length"
    fed: int = 0  # generated tokens fed back
    in_answer: bool = False  # inside <answer> (answer-stage passes)
    quoting: bool = False  # extractive answers: restricted to its sources


class ExplicitRequest(Request):
    """One question's state in the explicit agent's loop.

    Args:
        prompt: The question's prompt ids.
        question, emit, search, loop: As for :class:`~latentrag_plugins.engine.request.Request`.
        options: Its settings.
    """

    def __init__(
        self,
        prompt: list[int],
        question: str,
        options: ExplicitOptions,
        emit: Any,
        search: Any = None,
        loop: Any = None,
    ) -> None:
        super().__init__(question, emit, search, loop)
        self.options = options
        self.pending = list(prompt)  # ids to feed at its next wide pass
        self.carry: list[int] = []  # the last generated token, fed with the next ids
        self.sources = list(prompt)  # what an extractive answer may quote
        self.turn = 0
        self.current: Turn | None = None
        self.answer_mode = False  # generating a forced answer after <answer>
        self.answer = ""
        self.logits: torch.Tensor | None = None  # (V,) next token
        self.spans: SpanConstraint | None = None
        self.output_tokens = 0

    def found(self, agent: ExplicitAgent, docs: list[Any]) -> None:
        """Record the documents of its search and what to feed next: them, or, with no room
        left for them, a forced answer."""
        cfg = agent.config
        step = self.steps[-1]
        step.docs = list(docs)
        self.emit(StepEvent(step.index, "retrieve", False, step.docs))
        used = self.kv.pos + len(self.carry) + len(self.pending)
        budget = cfg.max_context_tokens - used - cfg.max_turn_tokens - reserve(agent)
        info = agent.information_ids(docs, budget)
        if not info:  # no room for documents and another turn: answer now
            self.decide(Step(index=self.turn + 1, action="answer", forced=True))
            self.force_answer(agent)
            return
        self.pending += info
        self.sources += info
        self.turn += 1
        self.phase = Phase.FEED

    def decide(self, step: Step) -> None:
        """Record a turn's step; an answer step is told at once."""
        self.steps.append(step)
        if step.action == "answer":
            self.emit(StepEvent(step.index, "answer", step.forced))

    def force_answer(self, agent: ExplicitAgent) -> None:
        """Feed ``<answer>`` next and generate the answer (``max_answer_tokens``)."""
        self.pending += agent.answer_open_ids()
        self.answer_mode = True
        self.phase = Phase.FEED

    def start_turn(self, agent: ExplicitAgent, plan: Any) -> None:
        """Begin a turn as its ids are fed (forced mode: its plan; else the length cap).

        Raises:
            ValueError: A forced turn does not fit the context budget.
        """
        cfg = agent.config
        self.spans = answer_spans(agent, self.sources)
        if self.answer_mode:
            self.current = Turn(cfg.max_answer_tokens, in_answer=True)
            self.current.quoting = self.spans is not None
            return
        used = self.kv.pos + len(self.carry) + len(self.pending)
        left = cfg.max_context_tokens - used - reserve(agent)
        if plan is not None:
            if len(plan[0]) > left:
                raise ValueError(
                    f"forced turn of {len(plan[0])} tokens does not fit the max_context_tokens "
                    f"budget ({left} tokens left)"
                )
            self.current = Turn(len(plan[0]), plan)
        else:
            self.current = Turn(min(cfg.max_turn_tokens, left))

    def end_turn(self, agent: ExplicitAgent) -> bool:
        """Read the turn that just ended; returns True when it searches (its subquery is the
        step's)."""
        t = self.current
        assert t is not None
        self.output_tokens += len(t.tokens)
        self.carry = [t.tokens[-1]] if t.tokens and t.fed < len(t.tokens) else []
        self.current, self.logits = None, None
        if self.answer_mode:
            text = agent.decode(t.tokens).split(sr1.ANSWER_END, 1)[0]
            self.answer, self.phase = self._cased(text), Phase.DONE
            return False
        if t.plan is not None:
            kind = "search" if "subquery" in t.plan[1] else "answer"
            thought = agent.decode(t.tokens[slice(*t.plan[1]["thought"])])
            sub, ans = (_span(agent, t, name) for name in ("subquery", "answer"))
        else:
            kind, thought, sub, ans = classify_turn(agent.decode(t.tokens), t.kind)
        if kind == "answer":
            self.decide(Step(index=self.turn, action="answer", thought=thought))
            self.answer, self.phase = self._cased(ans or ""), Phase.DONE
            return False
        if kind == "search" and sub and self.turn < self.options.max_turns:
            self.steps.append(
                Step(index=self.turn, action="retrieve", thought=thought, subquery=sub)
            )
            self.phase = Phase.SEARCH
            return True
        # no valid action, EOS, length cap, or a search past max_turns: force the answer
        self.decide(Step(index=self.turn, action="answer", thought=thought, forced=True))
        self.force_answer(agent)
        return False

    def _cased(self, answer: str) -> str:
        """The answer, stripped, as the documents or the question write it."""
        return cased(answer.strip(), [d.text for d in self.docs] + [self.question])

    def finish(self) -> LatentRAGResult:
        """Build the result (the request is done)."""
        result = self._result(self.answer, self.output_tokens)
        result._token_ids = self.kv.tokens + self.carry  # the last generated token, never fed
        return result


def reserve(agent: ExplicitAgent) -> int:
    """Tokens kept free for the answer."""
    return agent.config.max_answer_tokens + 8


def answer_spans(agent: ExplicitAgent, sources: list[int]) -> SpanConstraint | None:
    """The extractive-answer constraint over a request's sources (None unless configured)."""
    if not agent.config.extractive_answers:
        return None
    # The first token of </answer>, with or without a space before it, ends the quote (a bare
    # space token would end it too early).
    firsts = {agent.trusted(t)[0] for t in (sr1.ANSWER_END, " " + sr1.ANSWER_END)}
    stop = {t for t in firsts if agent.decode_raw([t]).strip()}
    if agent.eos_id is not None:
        stop.add(agent.eos_id)
    return quote_constraint([sources], agent.specials, stop)


def _span(agent: ExplicitAgent, t: Turn, name: str) -> str | None:
    """Text of a forced turn's span (None if the turn has no such span)."""
    marks = t.plan[1] if t.plan is not None else {}
    return agent.decode(t.tokens[slice(*marks[name])]) if name in marks else None


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


def stop_kind(tail: str, answer_mode: bool) -> str | None:
    """How a turn whose text ends with ``tail`` stops, if it does."""
    if sr1.ANSWER_END in tail:
        return "answer"
    if not answer_mode and sr1.SEARCH_END in tail:
        return "search"
    return None

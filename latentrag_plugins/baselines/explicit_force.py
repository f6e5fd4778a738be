"""The explicit agent's forcing mode for the benchmark: fixed searches and generation lengths.

:class:`ExplicitForce` fixes, per question, the number of searches and the token count of every
thought, subquery and answer (tags included, as in the paper's Table 8). The agent's forward
passes, logits and greedy picks stay the real ones; only the token *ids* that are kept are
replaced: the protocol's tags at fixed places and, in between, words of a fixed English filler
text (so that subqueries embedded by the retriever have realistic words even with a random-weight
model) or, with ``filler="model"``, the model's own greedy picks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from . import search_r1 as sr1

if TYPE_CHECKING:
    from .explicit import ExplicitAgent

FILLER_TEXT = (
    "I need to find the person who directed the film and then the city where that person was "
    "born, so first I will search for the director of the film and read the documents carefully "
    "before I decide which country and which year the question is really asking about here. "
) * 4
MIN_SUBQUERY_TEXT = 8  # forced mode: fewest subquery text tokens (Search-R1 subqueries: ~8)
MIN_ANSWER_TEXT = 3  # forced mode: fewest answer text tokens


@dataclass(frozen=True)
class ExplicitForce:
    """A forced turn plan for one question (benchmark mode).

    Token counts include the protocol tags, as in the paper's Table 8.

    Attributes:
        thought_tokens: Tokens of each thought, one per turn (``searches + 1`` entries).
        subquery_tokens: Tokens of each search call, one per search turn.
        answer_tokens: Tokens of the answer call (``<answer> ... </answer>``).
        filler: What goes between the tags: ``"text"`` (a fixed English text, so subqueries
            have realistic words for the retriever) or ``"model"`` (the model's own greedy
            picks, so texts and documents depend on the model, e.g. to test batching).
    """

    thought_tokens: tuple[int, ...]
    subquery_tokens: tuple[int, ...]
    answer_tokens: int
    filler: Literal["text", "model"] = "text"

    def __post_init__(self) -> None:
        if len(self.thought_tokens) != len(self.subquery_tokens) + 1:
            raise ValueError("ExplicitForce needs one thought per search turn plus one")

    @property
    def searches(self) -> int:
        """Number of search turns before the answer turn."""
        return len(self.subquery_tokens)

    @classmethod
    def from_totals(
        cls,
        searches: int,
        thought: float,
        subquery: float,
        answer: float,
        index: int = 0,
        filler: Literal["text", "model"] = "text",
    ) -> ExplicitForce:
        """Spread per-question token totals (e.g. Table 8's averages) over the turns.

        Fractional totals are rounded so that the mean over questions ``0..N-1`` matches.
        """

        def total(x: float) -> int:
            return int(np.floor((index + 1) * x) - np.floor(index * x))

        def split(n: int, parts: int) -> tuple[int, ...]:
            return tuple(n // parts + (1 if i < n % parts else 0) for i in range(parts))

        subq = split(total(subquery), searches) if searches else ()
        return cls(split(total(thought), searches + 1), subq, max(1, total(answer)), filler)


class ForceTemplate:
    """Forced token sequences: the protocol's tags at fixed places, filler text in between."""

    def __init__(self, agent: ExplicitAgent, model_filler: bool = False) -> None:
        t = agent.trusted
        self.model_filler = model_filler
        self.filler = agent.untrusted(FILLER_TEXT)
        self.think = list(t(sr1.THINK))
        self.think_end_search = list(t(f" {sr1.THINK_END}\n{sr1.SEARCH}"))
        self.search_end = list(t(f" {sr1.SEARCH_END}"))
        self.think_end = list(t(f" {sr1.THINK_END}\n"))
        self.answer = list(t(sr1.ANSWER))
        self.answer_end = list(t(f" {sr1.ANSWER_END}"))

    def _fill(self, n: int, offset: int) -> list[int | None]:
        if self.model_filler:
            return [None] * n  # the model's greedy pick
        f = self.filler
        return [f[(offset + j) % len(f)] for j in range(n)]

    def search_turn(self, thought: int, subquery: int) -> tuple[list[int | None], dict]:
        """A search turn of ``thought + subquery`` tokens (tags included), and its text spans.

        The subquery text keeps at least ``MIN_SUBQUERY_TEXT`` tokens, borrowed from the thought
        when the tokenizer spends many tokens on tags, so the turn's length stays exact while
        the retriever embeds a realistic subquery.
        """
        tags = len(self.think_end_search) + len(self.search_end)
        free = thought + subquery - len(self.think) - tags  # text tokens of the turn
        b = max(min(MIN_SUBQUERY_TEXT, free - 1), subquery - tags, 1)
        a = max(1, free - b)
        seq = (
            self.think + self._fill(a, 0) + self.think_end_search + self._fill(b, a)
            + self.search_end
        )  # fmt: skip
        s0 = len(self.think)
        s1 = s0 + a + len(self.think_end_search)
        return seq, {"thought": (s0, s0 + a), "subquery": (s1, s1 + b)}

    def answer_turn(self, thought: int, answer: int) -> tuple[list[int | None], dict]:
        """An answer turn of ``thought + answer`` tokens (tags included), and its text spans
        (the answer text keeps at least ``MIN_ANSWER_TEXT`` tokens, borrowed from the thought)."""
        tags = len(self.think_end) + len(self.answer) + len(self.answer_end)
        free = thought + answer - len(self.think) - tags
        b = max(min(MIN_ANSWER_TEXT, free - 1), answer - len(self.answer) - len(self.answer_end), 1)
        a = max(1, free - b)
        seq = (
            self.think + self._fill(a, 0) + self.think_end + self.answer + self._fill(b, a)
            + self.answer_end
        )  # fmt: skip
        s0 = len(self.think)
        s1 = s0 + a + len(self.think_end) + len(self.answer)
        return seq, {"thought": (s0, s0 + a), "answer": (s1, s1 + b)}

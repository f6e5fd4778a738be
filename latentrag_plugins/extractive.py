"""Extractive answers: each row's answer is one contiguous span of its source tokens.

The sources are what came from outside the model (the prompt with the question, and the retrieved
documents), so an answer can only quote them. Shared by LatentRAG, naive RAG and the explicit
agent (``extractive_answers`` in their configs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


class SpanConstraint:
    """Greedy-decoding constraint: the tokens generated per row form one span of its sources.

    A span starts at any source token and continues only where the sources continue it; the stop
    tokens may end it once it has one token (or at once, for a row without sources).

    Args:
        sources: Token ids per row (control tokens left out).
        stop: Token ids that end an answer.
    """

    def __init__(self, sources: Sequence[Sequence[int]], stop: Iterable[int]) -> None:
        self.sources = [list(s) for s in sources]
        self.stop = set(stop)
        self._next: list[set[int] | None] = [None] * len(self.sources)  # None: not started

    def allowed(self, row: int) -> set[int]:
        """Token ids ``row`` may generate next."""
        src, nxt = self.sources[row], self._next[row]
        if nxt is None:
            return set(src) or set(self.stop)
        return {src[j] for j in nxt if j < len(src)} | self.stop

    def mask(self, logits: torch.Tensor, rows: Iterable[int]) -> torch.Tensor:
        """``logits (B, V)`` with the tokens ``rows`` may not generate set to -inf (others kept)."""
        out = logits.clone()
        for i in rows:
            keep = torch.tensor(sorted(self.allowed(i)), device=logits.device)
            row = torch.full_like(out[i], float("-inf"))
            row[keep] = out[i, keep]
            out[i] = row
        return out

    def advance(self, row: int, token: int) -> None:
        """Record that ``row`` generated ``token`` (a span token, not a stop token)."""
        src, nxt = self.sources[row], self._next[row]
        starts = range(len(src)) if nxt is None else nxt
        self._next[row] = {j + 1 for j in starts if j < len(src) and src[j] == token}


def source_tokens(ids: Sequence[int], control: set[int]) -> list[int]:
    """``ids`` without control tokens."""
    return [t for t in ids if t not in control]


def quote_constraint(
    contexts: Sequence[Sequence[int]], control: set[int], stop: Iterable[int]
) -> SpanConstraint:
    """A :class:`SpanConstraint` over each row's context, control tokens left out."""
    return SpanConstraint([source_tokens(c, control) for c in contexts], stop)

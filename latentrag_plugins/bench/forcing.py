"""Forcing actions and generation lengths for the benchmark, without touching the real code path.

A random-weight model neither retrieves nor stops when a trained one would, so the benchmark forces
what the paper's models did on average (Table 8). For LatentRAG and naive RAG this is done with
forward hooks on the LLM (its input embedding and its LM head): the loop, the cache, the forward
passes and the greedy picks are the library's own; the hooks only edit logits:

- at the action read (the last thought slot), ``<query_1>`` wins, so the model retrieves until
  ``max_steps`` forces the answer;
- during answer generation, the stop tokens lose until a row has generated its target number of
  tokens, then ``</answer>`` wins (a row that stops leaves the engine's next token pass, and
  the forcer follows);
- during latent decoding (one batched generation per step), EOS loses until each item's target
  length, then wins.

The explicit agent has its own forcing mode (:class:`~latentrag_plugins.baselines.explicit_force.
ExplicitForce`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# Paper Table 8: average output tokens per question (Qwen2.5-7B, all datasets).
EXPLICIT_THOUGHT_TOKENS = 121.8
EXPLICIT_SUBQUERY_TOKENS = 37.9
EXPLICIT_ANSWER_TOKENS = 9.6
LATENT_ANSWER_TOKENS = 5.8
LATENT_DECODED_THOUGHT_TOKENS = 117.7
LATENT_DECODED_SUBQUERY_TOKENS = 29.3
NAIVE_ANSWER_TOKENS = 5.8  # same checkpoint and answer format as LatentRAG


def spread(total: float, index: int) -> int:
    """Integer share of question ``index`` so that the mean over ``0..N-1`` equals ``total``."""
    return int(math.floor((index + 1) * total) - math.floor(index * total))


def split(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` near-equal integers (larger first)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)] if parts else []


class LatentForcer:
    """Hooks that force LatentRAG's / naive RAG's actions and generation lengths.

    Use as ``with forcer.plan(answer=[...], decode=[[...], ...]): model.run_batch(...)``. The
    questions of the batch must move in step (every question retrieves until ``max_steps``).

    Args:
        model: The LatentRAG model (its LLM, control ids and prompts).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.ids = model.ids
        self.phase = "reason"
        self.t = 0
        self.answer: list[int] = []
        self.decode: list[list[int]] = []  # per decoding generation (one per step), per item
        self.calls = -1  # decoding generations so far
        self.live: list[int] = []  # questions still answering, in batch order
        self._handles: list[Any] = []
        self._step_ends = {self.ids.think[-1], self.ids.query[-1]}

    def plan(self, *, answer: Sequence[int], decode: Sequence[Sequence[int]] = ()) -> LatentForcer:
        """Set per-question answer lengths (tokens before ``</answer>``) and, per step's decoding
        generation, per-item decode lengths (in the order the items decode: each question's
        thought, then its subquery)."""
        self.answer, self.decode = list(answer), [list(d) for d in decode]
        return self

    def __enter__(self) -> LatentForcer:
        llm = self.model.llm
        self.phase, self.t, self.calls = "reason", 0, -1
        self._handles = [
            llm.get_input_embeddings().register_forward_hook(self._on_embed),
            llm.get_output_embeddings().register_forward_hook(self._on_head),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # Phase tracking from the token ids fed to the LLM.
    def _on_embed(self, module: Any, args: tuple, out: Any) -> None:
        ids = args[0]
        if ids.dim() == 1:  # decode_items embeds the decode prompt on its own
            if self.phase != "decode":
                self.calls += 1
            self.phase, self.t = "decode", 0
            return
        last = ids[:, -1].tolist()
        if any(i == self.ids.answer for i in last):  # <answer> fed: answer generation starts
            # In a step's pass, <answer> follows the slots (a branch after the query slots, or
            # right after the thought slots when max_steps forces the answer): the action read
            # comes first, then the first answer token (used only if the row answers).
            before = ids[:, -2].tolist() if ids.shape[1] > 1 else []
            merged = any(i in self._step_ends for i in before)
            self.phase, self.t = ("reason_then_answer" if merged else "answer"), 0
            self.live = list(range(len(self.answer)))
        elif any(i in self._step_ends for i in last):  # a step's slots: the action read follows
            self.phase = "reason"

    def _on_head(self, module: Any, args: tuple, out: Any) -> Any:
        if out.dim() != 2:  # LogitLens etc.: leave alone
            return out
        ids = self.ids
        if self.phase in ("reason", "reason_then_answer"):  # the action read: always retrieve
            out[:, ids.query[0]] = out.max(-1).values + 1e3
            if self.phase == "reason_then_answer":
                self.phase = "answer"
            return out
        answering = self.phase == "answer"
        if answering:
            # The engine's token passes hold only the questions still answering.
            rows = self.live if out.shape[0] == len(self.live) else range(out.shape[0])
            targets = [self.answer[q] if q < len(self.answer) else None for q in rows]
        else:
            call = self.decode[self.calls] if 0 <= self.calls < len(self.decode) else []
            targets = [call[r] if r < len(call) else None for r in range(out.shape[0])]
        stops = [ids.answer_end, ids.eos] if answering else [ids.eos]
        stops = [s for s in stops if s is not None]
        ended = set()
        for row, target in enumerate(targets):
            if target is None:
                continue
            if self.t < target:
                out[row, stops] = float("-inf")
            else:
                out[row, stops[0]] = float("inf")
                ended.add(row)
        if answering and out.shape[0] == len(self.live):
            self.live = [q for row, q in enumerate(self.live) if row not in ended]
        self.t += 1
        return out

"""Teacher-forced token sequences: a trajectory laid out exactly as inference would see it.

For a trajectory with steps 0..T-1 the sequence is (paper Prompt D.1)::

    question <think_1..m><query_1..n> <information> docs_0 </information>
             <think_1..m><query_1..n> <information> docs_1 </information> ...
             <think_1..m> <answer> answer </answer>

built with the model's :class:`~latentrag_plugins.prompts.PromptBuilder`, with the same document
budget as :func:`latentrag_plugins.inference.latent_loop` (documents cut to ``max_doc_tokens``
and to what is left of ``max_context_tokens``). At the answer step there are no query slots:
inference crops the speculative ones, so ``<think_m>`` is followed directly by ``<answer>``.

Labels (for L_gen) sit at the positions whose *next* token is supervised: each ``<think_m>``
(next: ``<query_1>`` = retrieve, or ``<answer>``), ``<answer>`` and each answer token (next: the
following answer token, finally ``</answer>``). Nothing else carries a label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .trajectories import Trajectory

if TYPE_CHECKING:
    from ..config import LatentRAGConfig
    from ..model import LatentRAG


class SequenceSkipped(Exception):
    """A trajectory cannot be replayed by the model; ``reason`` is ``"too many steps"`` or
    ``"too long"``, the message says more."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class TrainExample:
    """One trajectory as token ids plus the positions each loss reads.

    Attributes:
        index: Index of the trajectory in the prepared data.
        input_ids: The teacher-forced sequence ``(L,)``.
        action_pos: Position of ``<think_m>`` per step, the answer step last ``(T + 1,)``.
        answer_pos: Positions of ``<answer>`` and of each answer token.
        think_pos: The ``m`` thought-slot positions of every step, answer step last.
        query_pos: The ``n`` query-slot positions of every retrieval step ``(T, n)``.
        query_rows: Row of each retrieval step's subquery in the prepared tensors ``(T,)``.
        thought_targets: ``(think group, token ids + EOS)`` for every non-empty thought.
        subquery_targets: ``(retrieval step, token ids + EOS)`` for every subquery.
    """

    index: int
    input_ids: list[int]
    action_pos: list[int] = field(default_factory=list)
    answer_pos: list[int] = field(default_factory=list)
    think_pos: list[list[int]] = field(default_factory=list)
    query_pos: list[list[int]] = field(default_factory=list)
    query_rows: list[int] = field(default_factory=list)
    thought_targets: list[tuple[int, list[int]]] = field(default_factory=list)
    subquery_targets: list[tuple[int, list[int]]] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Sequence length in tokens."""
        return len(self.input_ids)

    @property
    def label_pos(self) -> list[int]:
        """Every position that carries an L_gen label (sorted)."""
        return sorted(self.action_pos + self.answer_pos)

    def labels(self) -> list[int]:
        """Next-token labels aligned with ``input_ids``; -100 where no loss is taken."""
        out = [-100] * len(self.input_ids)
        for p in self.label_pos:
            out[p] = self.input_ids[p + 1]
        return out


def _budget_exhausted(used: int, cfg: LatentRAGConfig, reserve: int) -> bool:
    """True when another step (documents and slots) no longer fits a context of ``used`` tokens
    beside ``reserve`` answer tokens. The inference loop applies the same rule and stops
    retrieving there, so a trajectory that retrieves on cannot be replayed."""
    left = cfg.max_context_tokens - used - reserve
    return left < 2 * (cfg.n_think + cfg.n_query) + 16


def decode_target(model: LatentRAG, text: str) -> list[int]:
    """Token ids the latent decoder must produce for ``text``: the text and EOS, cut at
    ``max_decode_tokens`` (no EOS when cut, as greedy decoding stops at the cap)."""
    ids = model.prompts.untrusted(" " + text.strip())
    cap = model.config.max_decode_tokens
    if len(ids) >= cap or model.ids.eos is None:
        return ids[:cap]
    return [*ids, model.ids.eos]


def build_example(
    model: LatentRAG,
    traj: Trajectory,
    *,
    index: int = 0,
    first_row: int = 0,
    max_length: int | None = None,
) -> TrainExample:
    """Lay out ``traj`` as the model's inference loop would see it.

    Args:
        model: The model (its prompts, control ids and budget settings are used).
        traj: The trajectory.
        index: Its index in the prepared data.
        first_row: Prepared-tensor row of its first subquery.
        max_length: Skip sequences longer than this (default: the model's context budget).

    Raises:
        SequenceSkipped: More steps than ``max_steps``, a question or history too long for the
            context budget, or a sequence over ``max_length``.
    """
    cfg, ids, p = model.config, model.ids, model.prompts
    m, n = cfg.n_think, cfg.n_query
    reserve = cfg.max_answer_tokens + 2
    if len(traj.steps) > cfg.max_steps:
        raise SequenceSkipped("too many steps", f"{len(traj.steps)} > max_steps={cfg.max_steps}")
    toks = p.question(traj.question)
    if len(toks) + m + n + reserve > cfg.max_context_tokens:
        raise SequenceSkipped("too long", "question too long for the context budget")
    ex = TrainExample(index=index, input_ids=toks)
    for t, step in enumerate(traj.steps):
        start = len(toks)
        toks += p.think_slots()
        ex.think_pos.append(list(range(start, start + m)))
        ex.action_pos.append(start + m - 1)
        toks += p.query_slots()
        ex.query_pos.append(list(range(start + m, start + m + n)))
        ex.query_rows.append(first_row + t)
        if _budget_exhausted(len(toks), cfg, reserve):
            raise SequenceSkipped("too long", f"context budget exhausted at step {t}")
        budget = cfg.max_context_tokens - len(toks) - m - n - reserve
        docs = [d.as_retrieved() for d in step.documents]
        toks += p.information(docs, budget, cfg.max_doc_tokens)
    start = len(toks)
    toks += p.think_slots()
    ex.think_pos.append(list(range(start, start + m)))
    ex.action_pos.append(start + m - 1)
    toks.append(ids.answer)
    answer = p.untrusted(" " + traj.answer.strip())[: cfg.max_answer_tokens]
    ex.answer_pos = list(range(len(toks) - 1, len(toks) + len(answer)))
    toks += answer
    toks.append(ids.answer_end)
    limit = max_length or cfg.max_context_tokens
    if len(toks) > limit:
        raise SequenceSkipped("too long", f"{len(toks)} tokens > max_length={limit}")
    thoughts = [s.thought for s in traj.steps] + [traj.final_thought]
    ex.thought_targets = [
        (g, decode_target(model, text)) for g, text in enumerate(thoughts) if text.strip()
    ]
    ex.subquery_targets = [(t, decode_target(model, s.subquery)) for t, s in enumerate(traj.steps)]
    return ex

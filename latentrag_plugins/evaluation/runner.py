"""``latentrag eval``: answer quality, retrieval quality and latency of LatentRAG and baselines.

Methods run batch by batch, interleaved (in a seeded random order per batch, so no method
always follows the same one), over the same store, after one untimed warm-up batch each.
Latency is the wall time of each method's call. Each question gets EM/F1 (SQuAD normalisation,
max over gold answers), retrieval success (a retrieved document contains a gold answer),
supporting-passage recall (when the questions list them), retrieval overlap with the explicit
agent's documents (paper Table 3 (b)), steps, latency and counts; the report aggregates them per
method and, when the questions carry ``hops``, per hop count.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..metrics import exact_match, f1, overlap, retrieval_success, support_recall
from ..results import LatentRAGResult
from .questions import Question
from .stats import OTHER, STAGES, latency_summary, mean, ratio

Runner = Callable[[list[str]], list[LatentRAGResult]]


@dataclass
class Record:
    """One method's outcome on one question."""

    method: str
    question: Question
    result: LatentRAGResult
    latency_ms: float
    stages_ms: dict[str, float]
    em: float = 0.0
    f1: float = 0.0
    retrieval_success: float = 0.0
    support_recall: float | None = None
    retrieval_overlap: float | None = None
    doc_ids: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Retrieval steps taken."""
        return sum(s.action == "retrieve" for s in self.result.steps)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able per-question record (for ``--predictions``)."""
        return {
            "id": self.question.id,
            "method": self.method,
            "question": self.question.question,
            "golden_answers": list(self.question.golds),
            "supporting_ids": list(self.question.supporting),
            "hops": self.question.hops,
            "answer": self.result.answer,
            "em": self.em,
            "f1": self.f1,
            "retrieval_success": self.retrieval_success,
            "support_recall": self.support_recall,
            "retrieval_overlap": self.retrieval_overlap,
            "steps": [s.model_dump(mode="json", exclude={"logit_lens"}) for s in self.result.steps],
            "latency_ms": self.latency_ms,
            "stages_ms": self.stages_ms,
            "forward_passes": self.result.forward_passes,
            "input_tokens": self.result.input_tokens,
            "output_tokens": self.result.output_tokens,
        }


def evaluate(
    runners: dict[str, Runner],
    questions: Sequence[Question],
    *,
    batch_size: int = 1,
    reference: str | None = "explicit",
    show_progress: bool = True,
    warmup: bool = True,
) -> dict[str, list[Record]]:
    """Run every method on every question and score each answer.

    Args:
        runners: ``{method: run_batch(questions) -> results}``.
        questions: The questions.
        batch_size: Questions per ``run_batch`` call. Latency per question is the call's wall
            time divided by the batch size (amortised when above 1).
        reference: Method whose documents define retrieval overlap (None: no overlap).
        show_progress: Show a progress bar.
        warmup: First run each method once, untimed, on the first batch (first-call costs:
            kernel choice for new shapes, fused weights, caches).

    Returns:
        ``{method: [Record per question]}`` in question order.
    """
    if batch_size < 1:
        raise ValueError("batch size must be >= 1")
    names = list(runners)
    out: dict[str, list[Record]] = {n: [] for n in names}
    batches = [list(questions[i : i + batch_size]) for i in range(0, len(questions), batch_size)]
    if warmup and batches:
        for name in names:
            runners[name]([q.question for q in batches[0]])
    bar = tqdm(total=len(questions) * len(names), desc="eval", unit="q", disable=not show_progress)
    rng = random.Random(0)
    for batch in batches:
        order = rng.sample(names, len(names))
        for name in order:
            t0 = time.perf_counter()
            results = runners[name]([q.question for q in batch])
            wall = (time.perf_counter() - t0) * 1e3
            share = 1.0 / len(batch)
            for q, res in zip(batch, results):
                stages = {s: float(getattr(res.timings_ms, s)) * share for s in STAGES}
                stages[OTHER] = max(0.0, wall * share - sum(stages.values()))
                out[name].append(Record(name, q, res, latency_ms=wall * share, stages_ms=stages))
            bar.update(len(batch))
    bar.close()
    for recs in out.values():
        for r in recs:
            r.doc_ids = [d.id for s in r.result.steps for d in s.docs]
            r.em = exact_match(r.result.answer, r.question.golds)
            r.f1 = f1(r.result.answer, r.question.golds)
            docs = [d for s in r.result.steps for d in s.docs]
            r.retrieval_success = retrieval_success(docs, r.question.golds)
            r.support_recall = support_recall(r.doc_ids, r.question.supporting)
    if reference in out:
        for name, recs in out.items():
            if name == reference:
                continue
            for r, ref in zip(recs, out[reference]):
                r.retrieval_overlap = overlap(r.doc_ids, ref.doc_ids)
    return out


def _summary(recs: Sequence[Record], with_latency: bool = True) -> dict[str, Any]:
    overlaps = [r.retrieval_overlap for r in recs if r.retrieval_overlap is not None]
    support = [r.support_recall for r in recs if r.support_recall is not None]
    s: dict[str, Any] = {
        "n": len(recs),
        "em": mean([r.em for r in recs]),
        "f1": mean([r.f1 for r in recs]),
        "retrieval_success": mean([r.retrieval_success for r in recs]),
        "support_recall": mean(support) if support else None,
        "retrieval_overlap": mean(overlaps) if overlaps else None,
        "mean_steps": mean([float(r.steps) for r in recs]),
    }
    if with_latency:
        lat = latency_summary([r.result for r in recs], [r.latency_ms for r in recs])
        lat["stages_ms"] = {
            st: mean([r.stages_ms.get(st, 0.0) for r in recs]) for st in (*STAGES, OTHER)
        }
        lat.pop("n", None)
        s.update(lat)
    return s


def report(records: dict[str, list[Record]], **meta: Any) -> dict[str, Any]:
    """The ``latentrag eval --json`` report: ``methods``, ``ratios`` and ``by_hops``.

    Args:
        records: Output of :func:`evaluate`.
        **meta: Extra top-level fields (model, index, machine, ...).
    """
    methods = {name: _summary(recs) for name, recs in records.items()}
    out: dict[str, Any] = dict(meta)
    out["n"] = max((len(r) for r in records.values()), default=0)
    out["methods"] = methods
    out["ratios"] = {}
    for stat, suffix in (("mean_ms", ""), ("p50_ms", "_p50")):
        lat = methods.get("latent", {}).get(stat)
        for base in ("explicit", "naive"):
            out["ratios"][f"latent_vs_{base}{suffix}"] = (
                ratio(lat, methods[base][stat]) if lat is not None and base in methods else None
            )
    hops = sorted(
        {r.question.hops for recs in records.values() for r in recs if r.question.hops is not None}
    )
    if hops:
        out["by_hops"] = {
            str(h): {
                "n": sum(1 for r in next(iter(records.values())) if r.question.hops == h),
                "methods": {
                    name: _summary([r for r in recs if r.question.hops == h])
                    for name, recs in records.items()
                },
            }
            for h in hops
        }
    return out

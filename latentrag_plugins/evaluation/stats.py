"""Aggregating per-question results: latency percentiles, stage means, counts.

Shared by ``latentrag eval`` and ``latentrag bench`` so both report the same numbers the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..results import LatentRAGResult

STAGES = ("prefill", "reasoning", "retrieval", "answer", "decode")
OTHER = "other"  # eval only: a call's wall time outside every stage


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default); 0 if empty."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return 0.0
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0 if empty."""
    return sum(values) / len(values) if values else 0.0


def latency_summary(
    results: Sequence[LatentRAGResult], per_question_ms: Sequence[float] | None = None
) -> dict[str, object]:
    """Latency (mean/p50/p95), stage means, forward passes and tokens of a method's results.

    Args:
        results: One result per question.
        per_question_ms: Wall time per question; defaults to each result's ``timings_ms.total``.
            (For batched runs, pass the batch time divided among its questions.)

    Returns:
        ``{"mean_ms", "p50_ms", "p95_ms", "stages_ms": {stage: mean}, "forward_passes",
        "input_tokens", "output_tokens", "n"}``.
    """
    totals = (
        list(per_question_ms)
        if per_question_ms is not None
        else [r.timings_ms.total for r in results]
    )
    return {
        "n": len(results),
        "mean_ms": mean(totals),
        "p50_ms": percentile(totals, 50),
        "p95_ms": percentile(totals, 95),
        "stages_ms": {s: mean([float(getattr(r.timings_ms, s)) for r in results]) for s in STAGES},
        "forward_passes": mean([float(r.forward_passes) for r in results]),
        "input_tokens": mean([float(r.input_tokens) for r in results]),
        "output_tokens": mean([float(r.output_tokens) for r in results]),
    }


def ratio(a: float, b: float) -> float | None:
    """``a / b``, or None when ``b`` is 0."""
    return a / b if b else None

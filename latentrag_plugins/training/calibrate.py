"""Choosing L_ret's temperature β (paper Appendix B, "Hyperparameters").

The paper picks β so that the reference distribution p puts about half of its mass on the top-3
documents, which is β ≈ 0.03 in most cases. Here the mass is measured on each subquery's own
top-N pseudo-relevant documents (the in-batch negatives added at train time score lower, so the
train-time mass is a little higher).
"""

from __future__ import annotations

import math

import torch

DEFAULT_BETA = 0.03


def top_mass(scores: torch.Tensor, beta: float, k: int = 3) -> float:
    """Average probability mass of the ``k`` best candidates under ``softmax(scores / beta)``.

    Args:
        scores: Cosine similarities ``(S, N)`` of S queries to N candidates each.
        beta: Temperature (> 0).
        k: How many top candidates to count.
    """
    p = torch.softmax(scores.double() / beta, dim=-1)  # (S, N)
    return float(p.topk(min(k, p.shape[1]), dim=-1).values.sum(-1).mean())


def calibrate_beta(
    scores: torch.Tensor,
    target: float = 0.5,
    k: int = 3,
    *,
    lo: float = 1e-4,
    hi: float = 10.0,
    iters: int = 60,
) -> float:
    """Bisect (in log space) for the β whose average top-``k`` mass is ``target``.

    The mass falls as β grows, from 1 (β → 0) to k/N (β → ∞).

    Args:
        scores: Cosine similarities ``(S, N)`` with N > k (e.g. each subquery's top-16).
        target: Wanted top-k mass, strictly between k/N and 1.
        k: Top documents counted (the inference top-k, 3).
        lo: Smallest β searched.
        hi: Largest β searched.
        iters: Bisection steps.

    Raises:
        ValueError: If there are no scores, N <= k, or the target cannot be reached.
    """
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError("calibrating beta needs at least one subquery's scores")
    n = scores.shape[1]
    if n <= k:
        raise ValueError(f"calibrating beta needs more than {k} candidates per subquery, got {n}")
    if not k / n < target < 1:
        raise ValueError(f"target top-{k} mass must be in ({k / n:.3f}, 1), got {target}")
    if top_mass(scores, hi, k) > target:
        return hi
    if top_mass(scores, lo, k) < target:
        return lo
    a, b = math.log(lo), math.log(hi)
    for _ in range(iters):
        mid = (a + b) / 2
        if top_mass(scores, math.exp(mid), k) > target:
            a = mid  # too peaked: raise the temperature
        else:
            b = mid
    return math.exp((a + b) / 2)

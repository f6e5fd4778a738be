"""InfoNCE ablation of L_ret (paper §5.3, Table 3 (ii)): contrastive retrieval training on
pseudo-relevant documents.

Positives of subquery s are its own top-``k`` pseudo-relevant documents (default k = 1, the
standard single-positive InfoNCE); every other candidate of the batch is a negative::

    L_nce = -1/|B_s| Σ_s log( Σ_{i ∈ P(s)} exp(cos(v^l_s, v_di)/β) / Σ_j exp(cos(v^l_s, v_dj)/β) )
"""

from __future__ import annotations

import torch


def infonce_retrieval_loss(
    lat_scores: torch.Tensor, positives: torch.Tensor, beta: float
) -> torch.Tensor:
    """Multi-positive InfoNCE, averaged over subqueries.

    Args:
        lat_scores: Cosine similarities of the latent embeddings to the candidates ``(S, C)``.
        positives: ``(S, C)`` bool, True for each row's positive documents (at least one).
        beta: Temperature (> 0).

    Returns:
        Scalar loss (0 when S == 0).
    """
    if lat_scores.shape[0] == 0:
        return lat_scores.sum() * 0.0
    if not bool(positives.any(-1).all()):
        raise ValueError("every subquery needs at least one positive document")
    logits = lat_scores.float() / beta  # (S, C)
    pos = logits.masked_fill(~positives, float("-inf"))  # (S, C)
    return (torch.logsumexp(logits, -1) - torch.logsumexp(pos, -1)).mean()

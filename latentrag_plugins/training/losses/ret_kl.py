"""L_ret: KL divergence between the reference and the latent retrieval distributions
(paper §4.2, Eqs. 7-8).

For each subquery s of a batch and each candidate document d_i (all in-batch pseudo-relevant
documents: the union of the batch's top-16 lists under the reference embeddings)::

    p_i(s) = softmax_i(cos(v'_s, v_di) / β)      reference: natural-language subquery, frozen tower
    q_i(s) = softmax_i(cos(v^l_s, v_di) / β)     latent: Proj_ret -> query tower
    L_ret  = 1/|B_s| Σ_s Σ_i p_i(s) log(p_i(s) / q_i(s))

Only q carries gradients; p is a fixed target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_retrieval_loss(
    ref_scores: torch.Tensor,
    lat_scores: torch.Tensor,
    beta: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(p‖q), averaged over subqueries.

    Args:
        ref_scores: Cosine similarities of the reference embeddings to the candidates ``(S, C)``.
        lat_scores: Cosine similarities of the latent embeddings to the candidates ``(S, C)``.
        beta: Temperature β (> 0), e.g. 0.03.
        mask: Optional ``(S, C)`` bool, False for candidates to leave out of a row.

    Returns:
        Scalar loss (0 when S == 0).
    """
    if lat_scores.shape[0] == 0:
        return lat_scores.sum() * 0.0
    ref = ref_scores.float().detach() / beta  # (S, C)
    lat = lat_scores.float() / beta  # (S, C)
    if mask is not None:
        ref = ref.masked_fill(~mask, float("-inf"))
        lat = lat.masked_fill(~mask, float("-inf"))
    log_p = F.log_softmax(ref, dim=-1)  # (S, C)
    log_q = F.log_softmax(lat, dim=-1)  # (S, C)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))  # (S, C)
    return terms.sum(-1).mean()

"""L_first: the first step's latent query learns to retrieve for the whole trajectory.

Used alone (``LatentRAG.embed_query(latent=True)``, ``LatentRAGEmbeddings(latent_queries=True)``),
the first step's query embedding is a one-step retriever, and a one-step retriever should find
the documents of every hop, not only the first hop's (which is all L_ret asks of it). L_first
aligns the first step's retrieval distribution with the mixture of the reference distributions
of all the trajectory's subqueries: an output-level alignment with the explicit agent's whole
search, as LaSER aligns a latent retriever with an explicit chain of thought::

    p_t = 1/T_t · Σ_s softmax(cos(v'_s, v_d) / β)     (the trajectory's T_t subqueries)
    q_t = softmax(cos(v^ℓ_{t,0}, v_d) / β)             (its first latent query)
    L_first = mean_t KL(p_t ‖ q_t)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def first_step_retrieval_loss(
    ref_scores: torch.Tensor, first_scores: torch.Tensor, owner: torch.Tensor, beta: float
) -> torch.Tensor:
    """KL(p_t‖q_t), averaged over trajectories.

    Args:
        ref_scores: Cosine similarities of every subquery's reference embedding to the
            candidates ``(S, C)``.
        first_scores: Cosine similarities of each trajectory's first latent query embedding to
            the candidates ``(F, C)``.
        owner: ``(S,)`` the trajectory (row of ``first_scores``) of each subquery.
        beta: Temperature β (> 0).

    Returns:
        Scalar loss (0 when F == 0).
    """
    if first_scores.shape[0] == 0:
        return first_scores.sum() * 0.0
    p_steps = F.softmax(ref_scores.float().detach() / beta, dim=-1)  # (S, C)
    p = torch.zeros_like(first_scores, dtype=torch.float32).index_add_(0, owner, p_steps)  # (F, C)
    p = p / p.sum(-1, keepdim=True)  # each row: the mean of its subqueries' distributions
    log_q = F.log_softmax(first_scores.float() / beta, dim=-1)  # (F, C)
    terms = torch.where(p > 0, p * (p.clamp_min(1e-30).log() - log_q), torch.zeros_like(p))
    return terms.sum(-1).mean()

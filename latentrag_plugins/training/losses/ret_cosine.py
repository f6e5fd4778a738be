"""Cosine ablation of L_ret (paper §5.3, Table 3 (i)): pull the latent subquery embedding
towards the reference embedding of the natural-language subquery.

    L_cos = 1/|B_s| Σ_s (1 - cos(v^l_s, v'_s))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_retrieval_loss(lat_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance.

    Args:
        lat_emb: Latent subquery embeddings ``(S, dim)``.
        ref_emb: Reference subquery embeddings ``(S, dim)`` (fixed targets).

    Returns:
        Scalar loss (0 when S == 0).
    """
    if lat_emb.shape[0] == 0:
        return lat_emb.sum() * 0.0
    cos = F.cosine_similarity(lat_emb.float(), ref_emb.float().detach(), dim=-1)  # (S,)
    return (1.0 - cos).mean()

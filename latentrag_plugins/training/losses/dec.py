"""L_dec: cross-entropy of decoding the natural-language thought or subquery from its latent
tokens (paper §4.3, Eqs. 9-10).

Each decode sequence is laid out like :func:`latentrag_plugins.decoding.decode_items` feeds it at
inference, then teacher-forced::

    embed(prompt D.2 or D.3)  Proj(H)  embed(target text)  ->  labels: target text + EOS

The position of the last projected latent predicts the first target token; each target token
predicts the next; the last one predicts EOS. Gradients reach the projector, the LLM, and
through H the main pass that produced the latents. L_dec = L_dec^thought + L_dec^subquery, each
the mean over its target tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def latent_decoding_loss(
    embed: nn.Module,
    decoder: nn.Module,
    head: nn.Module,
    proj: nn.Module,
    prompt_ids: list[int],
    latents: torch.Tensor,
    targets: torch.Tensor,
    pad_id: int,
) -> torch.Tensor:
    """Mean token cross-entropy of decoding ``targets`` from ``latents``.

    Args:
        embed: The LLM's input embedding layer.
        decoder: The LLM's decoder stack (``inputs_embeds`` -> ``last_hidden_state``).
        head: The LM head.
        proj: ``Proj_think`` or ``Proj_query``.
        prompt_ids: Token ids of prompt D.2 / D.3 (:meth:`PromptBuilder.decode_prompt`).
        latents: Latent tokens ``(N, T, d)``.
        targets: Target token ids ``(N, Lt)``, ending in EOS, right-padded with -100.
        pad_id: Token id fed at padded target positions (never a label).

    Returns:
        Scalar loss (0 when N == 0).
    """
    n, t = latents.shape[:2]
    if n == 0:
        return latents.sum() * 0.0
    dev = latents.device
    p = len(prompt_ids)
    prompt = embed(torch.tensor(prompt_ids, device=dev))  # (P, d)
    projected = proj(latents).to(prompt.dtype)  # (N, T, d)
    tgt_in = targets.masked_fill(targets < 0, pad_id)  # (N, Lt)
    x = torch.cat(
        [prompt.unsqueeze(0).expand(n, -1, -1), projected, embed(tgt_in)], dim=1
    )  # (N, P + T + Lt, d)
    h = decoder(inputs_embeds=x, use_cache=False).last_hidden_state  # (N, P + T + Lt, d)
    lt = targets.shape[1]
    h_pred = h[:, p + t - 1 : p + t - 1 + lt]  # (N, Lt, d): predicts targets[:, j]
    sel = targets >= 0  # (N, Lt)
    logits = head(h_pred[sel]).float()  # (K, V)
    return F.cross_entropy(logits, targets[sel])

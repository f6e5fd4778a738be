"""Latent decoding (paper §4.3) and LogitLens (paper E.7) for finished LatentRAG results.

Each thought/subquery decode depends only on its own latent tokens, so every thought and
subquery of every step of every question decodes in one batched greedy generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .context import BatchedContext, greedy_generate
from .results import LatentRAGResult

if TYPE_CHECKING:
    from .model import LatentRAG


def decode_items(
    model: LatentRAG, items: Sequence[tuple[str, torch.Tensor]]
) -> tuple[list[str], int]:
    """Decode latent token groups to text in one batched generation.

    Args:
        model: The model.
        items: ``(kind, latents)`` pairs; kind is ``"thought"`` or ``"subquery"``, latents
            ``(T, d_llm)``.

    Returns:
        The decoded texts (in order) and the number of forward passes used.
    """
    if not items:
        return [], 0
    emb = model.llm.get_input_embeddings()
    dev = emb.weight.device
    with torch.inference_mode():
        seqs: list[torch.Tensor] = [None] * len(items)  # type: ignore[list-item]
        for kind, proj in (("thought", model.proj_think), ("subquery", model.proj_query)):
            idx = [i for i, (k, _) in enumerate(items) if k == kind]
            if not idx:
                continue
            prompt = emb(torch.tensor(model.prompts.decode_prompt(kind), device=dev))  # (P, d)
            by_len: dict[int, list[int]] = {}
            for i in idx:
                by_len.setdefault(items[i][1].shape[0], []).append(i)
            for group in by_len.values():
                lat = torch.stack([items[i][1] for i in group]).to(dev)  # (g, T, d)
                projected = proj(lat).to(prompt.dtype)  # (g, T, d)
                for j, i in enumerate(group):
                    seqs[i] = torch.cat([prompt, projected[j]])  # (P + T, d)
        width = max(s.shape[0] for s in seqs)
        x = torch.zeros(len(seqs), width, seqs[0].shape[1], dtype=seqs[0].dtype, device=dev)
        new = torch.zeros(len(seqs), width, dtype=torch.long, device=dev)
        for i, s in enumerate(seqs):
            x[i, width - s.shape[0] :] = s
            new[i, width - s.shape[0] :] = 1
        ctx = BatchedContext(model.llm, len(seqs), model.ids.pad, model.wide_llm)
        first = ctx.logits(ctx.feed_embeds(x, new, keep=1)[:, -1])  # (N, V)
        ids = model.ids
        gens = greedy_generate(
            ctx,
            first,
            max_new=model.config.max_decode_tokens,
            stop={ids.eos} if ids.eos is not None else set(),
            banned=sorted(ids.all),
        )
    texts = [model.tokenizer.decode(g.tokens, skip_special_tokens=True).strip() for g in gens]
    return texts, ctx.passes


def decode_latents(model: LatentRAG, results: Sequence[LatentRAGResult]) -> int:
    """Fill ``thought`` and ``subquery`` of every step of ``results``; returns forward passes."""
    items: list[tuple[str, torch.Tensor]] = []
    where: list[tuple[int, int, str]] = []
    for ri, res in enumerate(results):
        for si, lat in enumerate(res._latents):
            items.append(("thought", lat["think"]))
            where.append((ri, si, "thought"))
            if "query" in lat:
                items.append(("subquery", lat["query"]))
                where.append((ri, si, "subquery"))
    texts, passes = decode_items(model, items)
    for (ri, si, kind), text in zip(where, texts):
        setattr(results[ri].steps[si], kind, text)
    return passes


def logit_lens(model: LatentRAG, latents: torch.Tensor, top: int = 5) -> list[list[str]]:
    """Top-``top`` vocabulary tokens of each latent token ``(T, d)``, read through the LM head.

    Control and special tokens are excluded.
    """
    with torch.inference_mode():
        logits = model.llm.get_output_embeddings()(latents.to(model.device)).float()  # (T, V)
        special = sorted(model.prompts.specials)
        logits[:, [i for i in special if i < logits.shape[1]]] = float("-inf")
        idx = logits.topk(top, dim=-1).indices.tolist()  # (T, top)
    tok = model.tokenizer
    return [
        [tok.convert_tokens_to_string([t]).strip() for t in tok.convert_ids_to_tokens(row)]
        for row in idx
    ]


def logit_lens_tokens(model: LatentRAG, results: Sequence[LatentRAGResult], top: int = 5) -> None:
    """Attach LogitLens views (``{"think": [[..]], "query": [[..]]}``) to every step."""
    for res in results:
        for step, lat in zip(res.steps, res._latents):
            step.logit_lens = {
                k: logit_lens(model, v, top)
                for k, v in (("think", lat["think"]), ("query", lat.get("query")))
                if v is not None
            }

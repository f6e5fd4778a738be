"""A lean forward pass for Qwen2- and Llama-style decoders, used by the agent loops.

transformers' ``Qwen2Model.forward`` spends a fixed time per call on output capture, mask
building and keyword plumbing; for a small model that is a large share of a pass (the demo's
4-layer LLM: about 0.5 ms of a 2 ms token pass). :func:`lean_forward` runs the same operations in
the same order (same modules, same rotary embedding, transformers' own sdpa attention), so its
hidden states equal ``decoder(...)``'s (tested bit for bit on one thread; bfloat16 products run
on packed weights, :mod:`.packed_linear`, which with several threads may round a long sum
differently). It applies only where that holds: :func:`supports` checks the decoder once per
loop.

It can also skip work nobody reads: with ``keep``, the last layer computes queries, attention
output and MLP only for the last ``keep`` positions (every position's keys and values still go
to the cache). The latent loop reads only the slots at the end of a step's pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .packed_linear import linear, plain_module


def _exact_classes() -> dict[type, tuple[type, ...]]:
    """Decoder class -> (layer, attention, MLP, norm) classes the lean forward reproduces."""
    from transformers.models.llama import modeling_llama as llama
    from transformers.models.qwen2 import modeling_qwen2 as qwen2

    return {
        qwen2.Qwen2Model: (
            qwen2.Qwen2DecoderLayer, qwen2.Qwen2Attention, qwen2.Qwen2MLP, qwen2.Qwen2RMSNorm
        ),
        llama.LlamaModel: (
            llama.LlamaDecoderLayer, llama.LlamaAttention, llama.LlamaMLP, llama.LlamaRMSNorm
        ),
    }  # fmt: skip


def supports(decoder: nn.Module) -> bool:
    """Whether :func:`lean_forward` computes exactly what ``decoder`` does: transformers' own
    Qwen2 or Llama decoder classes (not subclasses or remote code) in eval mode with sdpa
    attention and full attention in every layer, every projection an exact ``nn.Linear`` (no
    LoRA wrappers or quantised layers), and no hooks, patched forwards or offloaded weights
    (the input embedding aside: the lean forward takes embeddings, not ids)."""
    classes = _exact_classes().get(type(decoder))
    cfg = getattr(decoder, "config", None)
    if classes is None or cfg is None:
        return False
    if getattr(cfg, "_attn_implementation", None) != "sdpa":
        return False
    if set(getattr(cfg, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
        return False
    if len(decoder.layers) != cfg.num_hidden_layers:
        return False
    layer_cls, att_cls, mlp_cls, norm_cls = classes
    for layer in decoder.layers:
        att, mlp = layer.self_attn, layer.mlp
        if (type(layer), type(att), type(mlp)) != (layer_cls, att_cls, mlp_cls):
            return False
        if {type(layer.input_layernorm), type(layer.post_attention_layernorm)} != {norm_cls}:
            return False
        linears = (att.q_proj, att.k_proj, att.v_proj, att.o_proj)
        if any(type(x) is not nn.Linear for x in (*linears, mlp.gate_proj, mlp.up_proj)):
            return False
        if type(mlp.down_proj) is not nn.Linear:
            return False
    # The caller embeds the tokens (through the module, hooks included); the lean forward
    # starts from those embeddings and never calls the embedding module itself.
    embed = decoder.get_input_embeddings()
    return all(
        not mod.training and (mod is embed or plain_module(mod)) for mod in decoder.modules()
    )


def lean_forward(
    decoder: nn.Module,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any,
    keep: int | None = None,
) -> torch.Tensor:
    """``decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=..., past_key_values=
    cache, use_cache=True).last_hidden_state``, without transformers' per-call machinery.

    Args:
        decoder: A decoder that :func:`supports` accepts.
        embeds: Input embeddings ``(B, Lc, d)``.
        mask: 2D real-token mask ``(B, L + Lc)`` over cache and new tokens, or a 4D sdpa mask
            ``(B, 1, Lc, L + Lc)`` (boolean or additive).
        position_ids: Positions ``(B, Lc)`` for the rotary embedding.
        cache: The ``DynamicCache``; updated with every position's keys and values.
        keep: Return only the last ``keep`` positions, and compute only those in the last layer.

    Returns:
        Final-norm hidden states ``(B, Lc, d)``, or ``(B, keep, d)``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    width = embeds.shape[1]
    trim = keep is not None and keep < width
    last_mask = mask
    if mask.dim() == 2:  # as transformers builds it; the trimmed last layer needs it explicit
        mask, last_mask = sdpa_mask(mask, width), sdpa_mask(mask, width, force=trim)
    cos, sin = decoder.rotary_emb(embeds, position_ids)  # (B, Lc, hd) each
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, Lc, hd)
    x = embeds
    last = len(decoder.layers) - 1
    for i, layer in enumerate(decoder.layers):
        att = layer.self_attn
        h = layer.input_layernorm(x)  # (B, Lc, d)
        k = _heads(linear(h, att.k_proj.weight, att.k_proj.bias), att.head_dim)
        v = _heads(linear(h, att.v_proj.weight, att.v_proj.bias), att.head_dim)
        k = k * cos + _rotate_half(k) * sin  # (B, kv_heads, Lc, hd)
        k, v = cache.update(k, v, att.layer_idx)
        if i == last and trim:
            x, h, cos, sin = x[:, -keep:], h[:, -keep:], cos[:, :, -keep:], sin[:, :, -keep:]
            mask = last_mask[:, :, -keep:]
        q = _heads(linear(h, att.q_proj.weight, att.q_proj.bias), att.head_dim)
        q = q * cos + _rotate_half(q) * sin  # (B, heads, Lq, hd)
        a, _ = sdpa_attention_forward(att, q, k, v, mask, dropout=0.0, scaling=att.scaling)
        a = a.reshape(*x.shape[:2], -1).contiguous()  # (B, Lq, heads * hd)
        x = x + linear(a, att.o_proj.weight, att.o_proj.bias)
        x = x + _mlp(layer.mlp, layer.post_attention_layernorm(x))
    return decoder.norm(x)


def sdpa_mask(mask: torch.Tensor, width: int, force: bool = False) -> torch.Tensor | None:
    """The sdpa mask transformers builds from a 2D real-token mask ``(B, L + Lc)`` for ``width``
    new tokens over a cache: None where sdpa's own causal flag suffices (nothing masked, and one
    new token or no cache) unless ``force``, else a boolean ``(B, 1, Lc, L + Lc)``."""
    total = mask.shape[1]
    if not force and (width == 1 or width == total) and bool(mask.all()):
        return None
    q = torch.arange(total - width, total, device=mask.device)[:, None]  # (Lc, 1)
    k = torch.arange(total, device=mask.device)[None, :]  # (1, L + Lc)
    return ((k <= q)[None] & mask.bool()[:, None, :])[:, None]  # (B, 1, Lc, L + Lc)


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` for a Qwen2 or Llama MLP, its projections on packed weights."""
    gate = linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias)  # (B, L, d_ffn)
    up = linear(x, mlp.up_proj.weight, mlp.up_proj.bias)  # (B, L, d_ffn)
    return linear(mlp.act_fn(gate) * up, mlp.down_proj.weight, mlp.down_proj.bias)


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``(B, L, heads * hd)`` -> ``(B, heads, L, hd)``."""
    return x.view(*x.shape[:2], -1, head_dim).transpose(1, 2)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

"""What trains: LoRA (or full fine-tuning) on the LLM, the projectors and the query tower; the
document tower stays frozen (paper §4.2, Appendix B; DESIGN §2). The query tower's word
embeddings stay frozen too: latent inputs bypass them (only the framing tokens use them).

In LoRA mode the rows of the control tokens (``<think_i>``, ``<query_i>``, ``<answer>``, ...) in
the input embeddings, and in an untied LM head, are trained too, through peft's
``trainable_token_indices``; every other embedding row stays frozen. ``LatentRAG.save_pretrained``
saves such a model as ``llm_adapter/`` + ``added_embeddings.safetensors``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..extras import require
from ..projector import Projector
from .config import TrainConfig

if TYPE_CHECKING:
    from ..model import LatentRAG

log = logging.getLogger(__name__)


def set_llm_dropout(llm: nn.Module, p: float) -> None:
    """Set the attention dropout of every attention layer of an HF LLM (active in train mode)."""
    for mod in llm.modules():
        if isinstance(getattr(mod, "attention_dropout", None), float):
            mod.attention_dropout = p


def enable_checkpointing(llm: nn.Module) -> None:
    """Turn on activation (gradient) checkpointing of an HF LLM (non-reentrant)."""
    kw = {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


def drop_query_tower(model: LatentRAG, seed: int = 0) -> None:
    """Turn a model into the 'no pretrained retriever' ablation: no query tower, and a fresh
    ``Proj_ret`` mapping latent tokens straight to the embedding space (mean-pooled)."""
    if model.query_tower is None:
        return
    cfg = model.config
    model.config.pretrained_query_tower = False
    model.query_tower = None
    torch.manual_seed(seed)
    old = model.proj_ret
    proj = Projector(
        old.config["d_in"],
        model.doc_tower.dim,
        n_heads=cfg.projector_heads,
        ffn_mult=cfg.projector_ffn_mult,
        dropout=cfg.projector_dropout,
    )
    ref = next(old.parameters())
    model.proj_ret = proj.to(device=ref.device, dtype=ref.dtype)


def apply_lora(model: LatentRAG, cfg: TrainConfig) -> None:
    """Wrap ``model.llm`` in a peft LoRA model (r, α, dropout and target modules from ``cfg``),
    with the control-token embedding rows trainable."""
    peft = require("peft", "train", "LoRA training")
    llm = model.llm
    rows = sorted(model.ids.all)
    emb_name = _module_name(llm, llm.get_input_embeddings())
    tokens = {emb_name: rows}
    out = llm.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != llm.get_input_embeddings().weight.data_ptr():
        tokens[_module_name(llm, out)] = rows
    lora_cfg = peft.LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.llm_dropout,
        target_modules=cfg.lora_target_modules,
        trainable_token_indices=tokens,
        task_type="CAUSAL_LM",
    )
    model.llm = peft.get_peft_model(llm, lora_cfg)


def _module_name(root: nn.Module, target: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is target:
            return name.rsplit(".", 1)[-1]
    raise ValueError("module not found in the LLM")


def _train_last_layers(encoder: nn.Module, n: int) -> None:
    """Freeze an HF encoder except its last ``n`` transformer layers (and what follows them)."""
    layers = next(
        (m for m in encoder.modules() if isinstance(m, nn.ModuleList) and len(m) > 0), None
    )
    if layers is None:
        raise ValueError("query_tower_layers: the retriever has no list of transformer layers")
    encoder.requires_grad_(False)
    for layer in list(layers)[len(layers) - n :] if n else []:
        layer.requires_grad_(True)
    # Final norms after the layers (decoder-style embedders) follow the last layer.
    for name, mod in encoder.named_children():
        if isinstance(mod, nn.LayerNorm) or "norm" in name.lower():
            mod.requires_grad_(n > 0)


def llm_weight_dtype(cfg: TrainConfig, mixed_precision: str) -> torch.dtype:
    """Dtype the LLM is loaded in for training: float32 master weights, except the frozen base
    of a LoRA run in bf16 mixed precision (``cfg.base_dtype``)."""
    if cfg.full_finetune or cfg.base_dtype == "float32":
        return torch.float32
    if cfg.base_dtype == "bfloat16" or mixed_precision == "bf16":
        return torch.bfloat16
    return torch.float32


def trainable_to_float32(module: nn.Module) -> None:
    """Give every trainable tensor of ``module`` float32 master weights (adapters and rows
    created beside half-precision frozen weights)."""
    for p in module.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def setup_trainable(model: LatentRAG, cfg: TrainConfig) -> dict[str, int]:
    """Freeze and unfreeze the model's parts for ``cfg``; returns trainable parameter counts.

    Applies the 'no pretrained retriever' ablation, LoRA (unless ``full_finetune``), the LLM
    dropout and gradient checkpointing.
    """
    if not cfg.pretrained_retriever:
        drop_query_tower(model, cfg.seed)
    model.requires_grad_(False)
    if cfg.full_finetune:
        model.llm.requires_grad_(True)
    else:
        apply_lora(model, cfg)  # marks only the adapters and control-token rows trainable
    set_llm_dropout(model.llm, cfg.llm_dropout)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model.llm)
    model.llm.config.use_cache = False
    for part in (model.proj_ret, model.proj_think, model.proj_query, model.query_tower):
        if part is not None:
            part.requires_grad_(True)
    if model.query_tower is not None:
        # The query tower reads Proj_ret's output as inputs_embeds; its word embeddings only
        # frame the latents ([CLS]/[SEP] or EOS), so they stay frozen (saves optimizer memory).
        model.query_tower.encoder.get_input_embeddings().requires_grad_(False)
        if cfg.query_tower_layers is not None:
            _train_last_layers(model.query_tower.encoder, cfg.query_tower_layers)
    model.doc_tower.requires_grad_(False)
    trainable_to_float32(model)

    def count(m: nn.Module | None) -> int:
        return 0 if m is None else sum(p.numel() for p in m.parameters() if p.requires_grad)

    counts = {
        "llm": count(model.llm),
        "projectors": count(model.proj_ret) + count(model.proj_think) + count(model.proj_query),
        "query_tower": count(model.query_tower),
    }
    counts["total"] = sum(counts.values())
    return counts

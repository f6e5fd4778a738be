"""``LatentLossModule``: one teacher-forced pass over a batch, returning every loss (paper §4.4).

The module wraps a :class:`~latentrag_plugins.model.LatentRAG` so Accelerate (DDP, DeepSpeed)
can prepare it as one unit. ``forward(batch)`` runs the LLM once over the padded sequences,
reads the action/answer logits (L_gen), turns the query-slot states into latent query embeddings
(L_ret, and the optional L_first) and decodes the thought/subquery targets from the latent tokens
(L_dec)::

    L = L_gen + λ_ret · L_ret + λ_first · L_first + L_dec
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .losses import (
    cosine_retrieval_loss,
    first_step_retrieval_loss,
    generation_loss,
    infonce_retrieval_loss,
    kl_retrieval_loss,
    latent_decoding_loss,
)

if TYPE_CHECKING:
    from ..model import LatentRAG

RetLoss = Literal["kl", "cosine", "infonce"]


def llm_parts(llm: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """``(input embeddings, decoder stack, LM head)`` of a causal LM, or of a PEFT-wrapped one
    (LoRA layers are injected in place, so the base model's modules run the adapters)."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return base.get_input_embeddings(), base.get_decoder(), base.get_output_embeddings()


class LatentLossModule(nn.Module):
    """Computes LatentRAG's training losses for a collated batch.

    Args:
        model: The model being trained (modified in place by the optimizer).
        beta: Temperature of the retrieval distributions.
        ret_loss: ``"kl"`` (paper), ``"cosine"`` or ``"infonce"`` (ablations).
        lambda_ret: Weight of L_ret.
        lambda_first: Weight of L_first (:mod:`.losses.ret_first`; 0: not computed).
        decoding_loss: Compute L_dec (False: the "no L_dec" ablation).
        action_loss: ``"full"`` vocabulary or ``"restricted"`` 2-way action CE (see
            :mod:`.losses.gen`).
    """

    def __init__(
        self,
        model: LatentRAG,
        *,
        beta: float,
        ret_loss: RetLoss = "kl",
        lambda_ret: float = 1.0,
        lambda_first: float = 0.0,
        decoding_loss: bool = True,
        action_loss: Literal["full", "restricted"] = "full",
    ) -> None:
        super().__init__()
        self.model = model
        self.beta = beta
        self.ret_loss = ret_loss
        self.lambda_ret = lambda_ret
        self.lambda_first = lambda_first
        self.decoding_loss = decoding_loss
        self.action_ids = (
            (model.ids.query[0], model.ids.answer) if action_loss == "restricted" else None
        )

    def train(self, mode: bool = True) -> LatentLossModule:
        """Train mode for the LLM and projectors; the retriever towers stay in eval mode
        (retriever dropout 0, paper Appendix B)."""
        super().train(mode)
        self.model.doc_tower.eval()
        if self.model.query_tower is not None:
            self.model.query_tower.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses of one batch (tensors on the model's device, from :func:`.batching.collate`).

        Returns:
            ``loss`` (the weighted total), ``loss_gen``, ``loss_ret``, ``loss_first`` (0 when
            its weight is 0), ``loss_dec``,
            ``loss_dec_thought`` and ``loss_dec_subquery`` (scalars).
        """
        model = self.model
        embed, decoder, head = llm_parts(model.llm)
        ids = batch["input_ids"]  # (B, L)
        # Right padding + causal attention: real tokens never see padding, no mask needed.
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state  # (B, L, d)
        flat = hidden.flatten(0, 1)  # (B*L, d)

        logits = head(flat[batch["label_index"]])  # (K, V)
        loss_gen = generation_loss(
            logits, batch["labels"], is_action=batch["is_action"], action_ids=self.action_ids
        )

        h_query = flat[batch["query_index"]]  # (S, n, d)
        zero = flat.sum() * 0.0
        loss_ret = loss_first = zero
        # In float32 even under mixed precision: scores are divided by a small beta, and the
        # targets are exact. (DeepSpeed's bf16 mode keeps the weights in bf16: then the query
        # tower runs in bf16 and only the scores in float32.)
        with torch.autocast(h_query.device.type, enabled=False):
            if h_query.shape[0]:
                ret_dtype = next(model.proj_ret.parameters()).dtype
                lat = model.latent_query_embedding(h_query.to(ret_dtype))  # (S, dim)
                lat_scores = F.normalize(lat.float(), dim=-1) @ batch["cand_emb"].T  # (S, C)
                if self.ret_loss == "cosine":
                    loss_ret = cosine_retrieval_loss(lat, batch["ref_emb"])
                elif self.ret_loss == "infonce":
                    loss_ret = infonce_retrieval_loss(lat_scores, batch["positives"], self.beta)
                else:
                    loss_ret = kl_retrieval_loss(batch["ref_scores"], lat_scores, self.beta)
                if self.lambda_first:
                    loss_first = first_step_retrieval_loss(
                        batch["ref_scores"], lat_scores[batch["first_query"]],
                        batch["query_owner"], self.beta,
                    )  # fmt: skip

        loss_dec_t = loss_dec_s = zero
        if self.decoding_loss:
            pad = model.ids.pad
            prompts = model.prompts
            if batch["dec_thought_group"].numel():
                h_think = flat[batch["think_index"][batch["dec_thought_group"]]]  # (Nt, m, d)
                loss_dec_t = latent_decoding_loss(
                    embed, decoder, head, model.proj_think, prompts.decode_prompt("thought"),
                    h_think, batch["dec_thought_targets"], pad,
                )  # fmt: skip
            if batch["dec_query_group"].numel():
                h_sub = h_query[batch["dec_query_group"]]  # (Nq, n, d)
                loss_dec_s = latent_decoding_loss(
                    embed, decoder, head, model.proj_query, prompts.decode_prompt("subquery"),
                    h_sub, batch["dec_query_targets"], pad,
                )  # fmt: skip
        loss_dec = loss_dec_t + loss_dec_s
        total = loss_gen + self.lambda_ret * loss_ret + self.lambda_first * loss_first + loss_dec
        return {
            "loss": total,
            "loss_gen": loss_gen,
            "loss_ret": loss_ret,
            "loss_first": loss_first,
            "loss_dec": loss_dec,
            "loss_dec_thought": loss_dec_t,
            "loss_dec_subquery": loss_dec_s,
        }


def latent_embeddings(model: LatentRAG, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Teacher-forced latent query embeddings ``(S, dim)`` of a batch, without gradients (for
    evaluating retrieval alignment)."""
    _, decoder, _ = llm_parts(model.llm)
    with torch.no_grad():
        hidden = decoder(input_ids=batch["input_ids"], use_cache=False).last_hidden_state
        h_query = hidden.flatten(0, 1)[batch["query_index"]]  # (S, n, d)
        return model.latent_query_embedding(h_query)

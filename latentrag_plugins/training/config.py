"""``TrainConfig``: every training setting, validated, saved as sorted JSON next to the run.

Defaults are the paper's (Appendix B, "Hyperparameters"). Unknown keys in a loaded config warn
and are ignored.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ..config import VersionedConfig
from ..errors import LatentRAGError


class TrainConfig(VersionedConfig):
    """Settings of a training run (latent LatentRAG training, or explicit SFT)."""

    load_error: ClassVar[type[Exception]] = LatentRAGError
    config_name: ClassVar[str] = "training config"

    # --- what to train -----------------------------------------------------------------------
    mode: Literal["latent", "explicit"] = Field(
        default="latent",
        description="'latent': LatentRAG (L_gen + λ·L_ret + L_dec); 'explicit': plain causal-LM "
        "SFT of an explicit agent on Search-R1 transcripts rendered from the trajectories.",
    )
    full_finetune: bool = Field(
        default=False, description="Train every LLM weight instead of LoRA (small models)."
    )
    lora_r: int = Field(default=16, ge=1, description="LoRA rank (paper: 16).")
    lora_alpha: float = Field(default=64.0, gt=0, description="LoRA scaling α (paper: 64).")
    lora_target_modules: str | list[str] = Field(
        default="all-linear",
        description="Modules LoRA adapts; 'all-linear' = every projection of the LLM (paper).",
    )
    llm_dropout: float = Field(
        default=0.1, ge=0, lt=1, description="LLM attention dropout and LoRA dropout (paper: 0.1)."
    )

    # --- losses ------------------------------------------------------------------------------
    ret_loss: Literal["kl", "cosine", "infonce"] = Field(
        default="kl",
        description="Retrieval loss: 'kl' (paper) or the 'cosine'/'infonce' ablations.",
    )
    lambda_ret: float = Field(default=1.0, ge=0, description="Weight λ_ret of L_ret (paper: 1).")
    lambda_first: float = Field(
        default=0.0,
        ge=0,
        description="Weight λ_first of L_first (0: off, the paper): the first step's latent "
        "query learns to retrieve the documents of every subquery of its trajectory, for use "
        "as a one-step retriever (embed_query(latent=True), LatentRAGEmbeddings). Not in the "
        "paper; it changes the loop's first search too.",
    )
    decoding_loss: bool = Field(
        default=True, description="Add L_dec (False: the 'no L_dec' ablation)."
    )
    pretrained_retriever: bool = Field(
        default=True,
        description="Keep the pretrained query tower. False: drop it and pool Proj_ret's output "
        "(the 'no pretrained retriever' ablation); a model without a query tower trains as is.",
    )
    query_tower_layers: int | None = Field(
        default=None,
        ge=0,
        description="Train only the query tower's last N encoder layers (None: all; its word "
        "embeddings never train). Keeps checkpoints small: only changed tensors are saved.",
    )
    beta: float | None = Field(
        default=None, gt=0, description="L_ret temperature (None: the prepared data's β)."
    )
    action_loss: Literal["full", "restricted"] = Field(
        default="full",
        description="Action CE over the full vocabulary or only {<query_1>, <answer>}.",
    )
    infonce_positives: int = Field(
        default=1, ge=1, description="Own top documents that count as positives for InfoNCE."
    )

    # --- optimisation ------------------------------------------------------------------------
    epochs: int = Field(default=5, ge=1, description="Passes over the data (paper: 5).")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(
        default=16, ge=1, description="Trajectories per batch on each process (paper: 16)."
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, description="Batches per optimizer step (not with DeepSpeed)."
    )
    lr: float = Field(default=1e-4, gt=0, description="Peak learning rate (paper: 1e-4).")
    weight_decay: float = Field(
        default=0.01, ge=0, description="AdamW weight decay on matrices (paper: 0.01)."
    )
    adam_beta1: float = Field(default=0.9, gt=0, lt=1, description="AdamW β1 (paper: 0.9).")
    adam_beta2: float = Field(default=0.999, gt=0, lt=1, description="AdamW β2 (paper: 0.999).")
    adam_eps: float = Field(default=1e-8, gt=0, description="AdamW ε.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        default="linear", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(
        default=0.0, ge=0, lt=1, description="Share of steps with linear warm-up."
    )
    max_grad_norm: float | None = Field(
        default=1.0, gt=0, description="Clip gradients to this norm (None: no clipping)."
    )
    max_length: int = Field(
        default=3000, ge=16, description="Longest trajectory in tokens; longer ones are skipped."
    )
    n_bins: int = Field(default=200, ge=1, description="Length bins; a batch comes from one bin.")
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute LLM activations in backward to save memory."
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        default="auto", description="'auto': bf16 on GPUs that support it, else float32."
    )
    base_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Dtype of the LLM's frozen weights under LoRA. 'auto': bfloat16 when "
        "training in bf16 mixed precision (half their memory; products run in bf16 either "
        "way), else float32. Trained weights (adapters, projectors, query tower, full "
        "fine-tuning) always keep float32.",
    )
    deepspeed: str | None = Field(
        default=None,
        description="DeepSpeed config file, or 'zero1' for the shipped ZeRO-1 config.",
    )
    seed: int = Field(default=0, description="Seed of initialisation, shuffles and dropout.")

    # --- output ------------------------------------------------------------------------------
    save_every: int = Field(
        default=500, ge=0, description="Checkpoint every N steps (0: only the final model)."
    )
    save_total_limit: int | None = Field(
        default=2, ge=1, description="Keep the newest N checkpoints (None: keep all)."
    )
    log_every: int = Field(default=10, ge=1, description="Log metrics every N steps.")
    save_merged: bool = Field(
        default=False,
        description="Save a LoRA model with merged full weights instead of an adapter (always "
        "merged when the base model cannot be reloaded by id or path).",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.deepspeed and self.gradient_accumulation_steps > 1:
            raise ValueError("set gradient accumulation in the DeepSpeed config, not here")
        return self

"""``latentrag train``: fine-tune LatentRAG (or an explicit agent) from prepared trajectories."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_trust_arg

# CLI flag -> (TrainConfig field, value when the flag is a switch)
_SWITCHES = {
    "full_finetune": ("full_finetune", True),
    "no_decoding_loss": ("decoding_loss", False),
    "no_pretrained_retriever": ("pretrained_retriever", False),
    "gradient_checkpointing": ("gradient_checkpointing", True),
    "save_merged": ("save_merged", True),
}
_VALUES = (
    "mode", "epochs", "max_steps", "batch_size", "lr", "ret_loss", "lambda_ret", "lambda_first",
    "beta", "save_every", "log_every", "seed", "max_length", "lora_r", "lora_alpha", "llm_dropout",
    "warmup_ratio", "lr_scheduler", "mixed_precision", "deepspeed", "action_loss",
    "gradient_accumulation_steps", "save_total_limit", "n_bins", "query_tower_layers",
    "base_dtype",
)  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="Train a LatentRAG model (or an explicit agent) from trajectories.",
        description=(
            "Fine-tune with L = L_gen + lambda_ret * L_ret + L_dec (paper 4.4) on data made by "
            "`latentrag prepare`. Defaults are the paper's (LoRA r=16, alpha=64, lr 1e-4, 5 "
            "epochs, batch 16). Runs on CPU, one GPU, or several with `accelerate launch`. The "
            "final model is saved at OUT (load it with `latentrag ask --model OUT`); checkpoints "
            "go to OUT/checkpoints/step-N, metrics to OUT/train_log.jsonl."
        ),
    )
    p.add_argument("--model", required=True, metavar="DIR", help="Checkpoint to start from.")
    add_trust_arg(p)
    p.add_argument(
        "--data",
        required=True,
        metavar="PREPARED",
        help="Prepared-data directory (explicit mode: also a trajectory JSONL file).",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="Run directory.")
    p.add_argument(
        "--mode",
        choices=["latent", "explicit"],
        default=None,
        help="latent (LatentRAG, default) or explicit (SFT of an explicit agent on Search-R1 "
        "transcripts rendered from the trajectories).",
    )
    p.add_argument("--config", metavar="FILE", help="TrainConfig JSON; flags override it.")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="Epochs (5).")
    g.add_argument("--max-steps", type=int, default=None, help="Stop after N optimizer steps.")
    g.add_argument("--batch-size", type=int, default=None, help="Trajectories per batch (16).")
    g.add_argument(
        "--gradient-accumulation-steps", type=int, default=None, help="Batches per step (1)."
    )
    g.add_argument("--lr", type=float, default=None, help="Learning rate (1e-4).")
    g.add_argument(
        "--lr-scheduler", choices=["constant", "linear", "cosine"], default=None, help="(linear)"
    )
    g.add_argument("--warmup-ratio", type=float, default=None, help="Warm-up share (0).")
    g.add_argument("--max-length", type=int, default=None, help="Longest trajectory (3000).")
    g.add_argument("--n-bins", type=int, default=None, help="Length bins (200).")
    g.add_argument("--seed", type=int, default=None, help="Seed (0).")
    g.add_argument("--full-finetune", action="store_true", help="Train all LLM weights.")
    g.add_argument("--lora-r", type=int, default=None, help="LoRA rank (16).")
    g.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (64).")
    g.add_argument("--llm-dropout", type=float, default=None, help="LLM dropout (0.1).")
    g.add_argument(
        "--gradient-checkpointing", action="store_true", help="Trade compute for memory."
    )
    g.add_argument(
        "--mixed-precision",
        choices=["auto", "no", "bf16", "fp16"],
        default=None,
        help="(auto: bf16 on GPUs that support it)",
    )
    g.add_argument(
        "--base-dtype",
        choices=["auto", "float32", "bfloat16"],
        default=None,
        help="Dtype of the LLM's frozen weights under LoRA (auto: bfloat16 when training in "
        "bf16, halving their memory).",
    )
    g.add_argument(
        "--deepspeed",
        metavar="CONFIG",
        default=None,
        help="DeepSpeed config file, or 'zero1' for the shipped ZeRO-1 config.",
    )
    lo = p.add_argument_group("losses and ablations")
    lo.add_argument(
        "--ret-loss", choices=["kl", "cosine", "infonce"], default=None, help="L_ret (kl)."
    )
    lo.add_argument("--lambda-ret", type=float, default=None, help="Weight of L_ret (1).")
    lo.add_argument(
        "--lambda-first",
        type=float,
        default=None,
        help="Weight of L_first (0: off): train the first step's latent query to retrieve "
        "every subquery's documents of its trajectory, for one-step latent query embeddings.",
    )
    lo.add_argument("--beta", type=float, default=None, help="Temperature (prepared data's).")
    lo.add_argument("--no-decoding-loss", action="store_true", help="Leave out L_dec.")
    lo.add_argument(
        "--no-pretrained-retriever",
        action="store_true",
        help="Drop the pretrained query tower; latent embeddings are pooled Proj_ret outputs.",
    )
    lo.add_argument(
        "--query-tower-layers",
        type=int,
        default=None,
        metavar="N",
        help="Train only the query tower's last N layers (default: all).",
    )
    lo.add_argument(
        "--action-loss", choices=["full", "restricted"], default=None, help="Action CE (full)."
    )
    o = p.add_argument_group("output")
    o.add_argument("--resume", action="store_true", help="Continue from the newest checkpoint.")
    o.add_argument("--save-every", type=int, default=None, help="Checkpoint every N steps (500).")
    o.add_argument("--save-total-limit", type=int, default=None, help="Checkpoints kept (2).")
    o.add_argument("--save-merged", action="store_true", help="Save LoRA models merged.")
    o.add_argument("--log-every", type=int, default=None, help="Log every N steps (10).")
    o.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    o.add_argument("--json", action="store_true", help="Print the run summary as JSON.")
    p.set_defaults(func=run)
    return p


def build_config(args: argparse.Namespace):  # noqa: ANN201 - TrainConfig, imported lazily
    """The TrainConfig of a command line: ``--config`` (or defaults), then the given flags."""
    import json
    from pathlib import Path

    from ..training.config import TrainConfig

    data: dict = {}
    if args.config:
        try:
            data = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{args.config}: not a readable JSON config ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{args.config}: a config is a JSON object of TrainConfig fields")
    for flag, (field, value) in _SWITCHES.items():
        if getattr(args, flag, False):
            data[field] = value
    for name in _VALUES:
        if getattr(args, name, None) is not None:
            data[name] = getattr(args, name)
    return TrainConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import Trainer
    from .common import print_json

    cfg = build_config(args)
    model: Any = args.model
    if args.trust_remote_code:  # loaded here, where custom code may run: the trainer moves it
        import torch

        if cfg.mode == "explicit":
            from ..baselines.explicit import ExplicitAgent as loader
        else:
            from ..model import LatentRAG as loader
        model = loader.from_pretrained(
            args.model, device="cpu", dtype=torch.float32, trust_remote_code=True
        )
    trainer = Trainer(model, args.data, args.out, cfg)
    summary = trainer.train(resume=args.resume, show_progress=not args.no_progress)
    if not trainer.is_main_process:  # distributed run: one report is enough
        return 0
    if args.json:
        print_json(summary)
        return 0
    print(
        f"trained {summary['steps']} steps ({summary['epochs']} epochs) in "
        f"{summary['seconds']:.1f} s ({summary['steps_per_second']:.3g} steps/s on "
        f"{summary['device']}); model saved to {args.out}"
    )
    return 0

"""Measure ``latentrag train`` at a real model's shape on one device: peak memory, speed, and the
projected wall time of the paper's recipe.

The model has random weights of a named shape (``latentrag_plugins.model_zoo``: ``qwen2.5-7b``
with a ``qwen3-emb-0.6b`` query tower is the paper's pair), created directly on the device in
its dtype, so nothing needs a model hub. The data are synthetic trajectories that fill the
context budget (:mod:`.scale_data`). Training runs through :class:`.trainer.Trainer`, the code
``latentrag train`` runs (LoRA, losses, length-binned batches, Accelerate, bf16), for a few
optimizer steps, without checkpoints or export.

Usage::

    python -m latentrag_plugins.training.scale_check --out DIR \\
        [--shape qwen2.5-7b --tower qwen3-emb-0.6b --seq-len 3000 --batch 16 --micro-batch 4 \\
         --steps 4]
    python -m latentrag_plugins.training.scale_check --out DIR --shape tiny \\
        --tower tiny-qwen3-emb --seq-len 300 --batch 4 --micro-batch 2 --steps 2   # CPU smoke

Writes ``DIR/NAME.json`` (figures, settings, device, versions) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

# The paper's recipe (Appendix B/C): trajectories of the NQ + HotpotQA training questions (FlashRAG
# splits: 79,168 + 90,447; only correct ones are kept, a count the paper does not give, so this
# is an upper bound), 5 epochs, batch 16, sequences of at most 3,000 tokens.
PAPER_TRAJECTORIES = 79_168 + 90_447
PAPER_EPOCHS = 5
# Mean tokens of a LatentRAG question in the paper's Table 8 (1,275.2 in + 5.8 out): the length
# of an average teacher-forced trajectory.
PAPER_MEAN_TOKENS = 1281


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m latentrag_plugins.training.scale_check",
        description="Train a random model of a real shape for a few steps with `latentrag "
        "train`'s code; report peak memory, tokens/s, s/step and the projected time of the "
        "paper's recipe.",
    )
    p.add_argument("--out", required=True, type=Path, help="Directory for NAME.json and the run.")
    p.add_argument("--name", default="scale_check", help="Name of the JSON report (scale_check).")
    p.add_argument("--shape", default="qwen2.5-7b", help="LLM shape (qwen2.5-7b).")
    p.add_argument("--tower", default="qwen3-emb-0.6b", help="Query tower shape (qwen3-emb-0.6b).")
    p.add_argument("--seq-len", type=int, default=3000, help="Tokens per trajectory (3000).")
    p.add_argument("--batch", type=int, default=16, help="Trajectories per optimizer step (16).")
    p.add_argument(
        "--micro-batch", type=int, default=4, help="Trajectories per forward pass (4); the rest "
        "by gradient accumulation."
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=4, help="Optimizer steps (4; the first warms up).")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (16).")
    p.add_argument(
        "--no-gradient-checkpointing", action="store_true", help="Keep all LLM activations."
    )
    p.add_argument(
        "--mixed-precision", default="auto", choices=["auto", "no", "bf16"], help="(auto)"
    )
    p.add_argument(
        "--base-dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="(auto)"
    )
    p.add_argument(
        "--query-tower-layers", type=int, default=None, help="Train only its last N layers."
    )
    p.add_argument(
        "--llm-layers", type=int, default=None,
        help="LLM decoder layers (default: the shape's); fewer checks the widths quickly.",
    )  # fmt: skip
    p.add_argument("--device", default=None, help="Device (default: cuda if available).")
    p.add_argument("--seed", type=int, default=0, help="Seed (0).")
    p.add_argument("--trajectories", type=int, default=PAPER_TRAJECTORIES,
                   help=f"Trajectories of the projected recipe ({PAPER_TRAJECTORIES:,}).")  # fmt: skip
    p.add_argument("--mean-tokens", type=int, default=PAPER_MEAN_TOKENS,
                   help=f"Their mean length in tokens ({PAPER_MEAN_TOKENS:,}).")  # fmt: skip
    args = p.parse_args(argv)
    if args.batch % args.micro_batch:
        p.error("--batch must be a multiple of --micro-batch")
    return args


def build_model(args: argparse.Namespace, device: torch.device) -> Any:
    """A random LatentRAG of ``args.shape`` with an ``args.tower`` query tower, created on
    ``device`` in its inference dtype (bf16 on GPUs), its context budget ``args.seq_len`` and
    its documents as long as lets the synthetic trajectories fill it."""
    import copy

    from ..devices import default_dtype
    from ..model import LatentRAG
    from ..model_zoo import build_encoder, build_llm, build_tokenizer
    from .scale_data import fit_doc_tokens

    dtype = default_dtype(device)
    tok = build_tokenizer()
    layers = {} if args.llm_layers is None else {"num_hidden_layers": args.llm_layers}
    llm = build_llm(args.shape, seed=args.seed, device=device, dtype=dtype, **layers)
    llm.config.name_or_path = f"random:{args.shape}"
    tower = build_encoder(args.tower, seed=args.seed, device=device, dtype=dtype)
    model = LatentRAG.init(
        llm, (tower, copy.deepcopy(tok)), tokenizer=tok, retriever_id=f"random:{args.tower}",
        device=device, dtype=dtype, seed=args.seed, max_context_tokens=args.seq_len,
    )  # fmt: skip
    fit_doc_tokens(model, args.seq_len, seed=args.seed)
    return model


def train_config(args: argparse.Namespace) -> Any:
    """The run's :class:`.config.TrainConfig`: the paper's defaults, ``args``' sizes."""
    from .config import TrainConfig

    return TrainConfig(
        batch_size=args.micro_batch, gradient_accumulation_steps=args.batch // args.micro_batch,
        max_steps=args.steps, lora_r=args.lora_r, max_length=args.seq_len,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        mixed_precision=args.mixed_precision, base_dtype=args.base_dtype,
        query_tower_layers=args.query_tower_layers, seed=args.seed, save_every=0, log_every=1,
    )  # fmt: skip


def step_figures(log: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-step figures from a run's ``train_log.jsonl`` rows (one per step); the first step
    (warm-up) is left out of the steady-state ones when there are others."""
    times = [r["time"] for r in log]
    durations = [b - a for a, b in zip([0.0, *times], times)]
    tokens = [r["tokens"] for r in log]
    steady = slice(1, None) if len(log) > 1 else slice(None)
    secs, toks = durations[steady], tokens[steady]
    return {
        "first_step_seconds": round(durations[0], 3),
        "seconds_per_step": round(statistics.median(secs), 3),
        "tokens_per_step": round(statistics.mean(toks), 1),
        "tokens_per_second": round(sum(toks) / max(sum(secs), 1e-9), 1),
        "step_seconds": [round(d, 3) for d in durations],
        "losses": [round(r["loss"], 4) for r in log],
    }


def projection(
    fig: dict[str, Any], args: argparse.Namespace, seq_tokens: float, dec_tokens: float
) -> dict[str, Any]:
    """Projected hours of ``args.trajectories`` trajectories x 5 epochs on 1 and 8 GPUs.

    Time per trajectory is taken as proportional to its tokens, main pass plus decoding
    passes (attention's quadratic share makes shorter trajectories a little cheaper than
    that); 8 GPUs are assumed 8 times as fast (data parallel).
    """
    per_traj = fig["seconds_per_step"] / args.batch  # s per trajectory of ``seq_tokens``
    n = args.trajectories * PAPER_EPOCHS
    at_mean = per_traj * (args.mean_tokens + dec_tokens) / (seq_tokens + dec_tokens)
    hours = {"at_seq_len": n * per_traj / 3600, "at_mean_tokens": n * at_mean / 3600}
    return {
        "trajectories": args.trajectories,
        "epochs": PAPER_EPOCHS,
        "mean_tokens": args.mean_tokens,
        **{f"hours_1_gpu_{k}": round(h, 1) for k, h in hours.items()},
        **{f"hours_8_gpus_{k}": round(h / 8, 1) for k, h in hours.items()},
        "assumptions": "time per trajectory proportional to its tokens (main pass + decoding "
        "passes); 8 GPUs = 8x one GPU (data parallel, not measured)",
    }


def environment(device: torch.device) -> dict[str, Any]:
    """Device name and library versions."""
    import transformers

    env: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    }
    for name in ("peft", "accelerate"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    if device.type == "cuda":
        env["gpu_memory_gib"] = round(
            torch.cuda.get_device_properties(device).total_memory / 2**30, 1
        )
    return env


def decode_tokens(model: Any, data: Any, seq_len: int) -> float:
    """Mean tokens per trajectory that L_dec's decoding passes feed (prompt, latents, target)."""
    from .sequences import build_example

    ex = build_example(model, data.trajectories[0], max_length=seq_len)
    cfg, prompts = model.config, model.prompts
    thought = len(prompts.decode_prompt("thought")) + cfg.n_think
    subquery = len(prompts.decode_prompt("subquery")) + cfg.n_query
    return float(
        sum(thought + len(t) for _, t in ex.thought_targets)
        + sum(subquery + len(t) for _, t in ex.subquery_targets)
    )


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """Build, train, measure; returns the report (also written to ``OUT/NAME.json``)."""
    from ..devices import resolve_device
    from .scale_data import synthetic_prepared
    from .trainer import Trainer

    device = resolve_device(args.device)
    report: dict[str, Any] = {"settings": vars(args) | {"out": str(args.out)}}
    report["environment"] = environment(device)
    t0 = time.perf_counter()
    model = build_model(args, device)
    data = synthetic_prepared(model, args.batch * args.steps, seed=args.seed)
    report["init_seconds"] = round(time.perf_counter() - t0, 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        report["memory_after_init_gib"] = round(torch.cuda.memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    run_dir = args.out / f"{args.name}_run"
    shutil.rmtree(run_dir, ignore_errors=True)  # this check's own scratch run
    trainer = Trainer(model, data, run_dir, train_config(args))
    try:
        summary = trainer.train(show_progress=False, export=False)
    except torch.cuda.OutOfMemoryError as exc:
        report["error"] = f"out of memory: {str(exc).splitlines()[0]}"
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        return _write(args, report)
    log = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    figures = step_figures(log)
    lengths = trainer.task.lengths if trainer.task is not None else []
    seq_tokens = statistics.mean(lengths)
    dec = decode_tokens(model, data, args.seq_len)
    report |= {
        "peak_memory_gib": summary.get("peak_memory_gib"),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
        if device.type == "cuda" else None,
        "mean_sequence_tokens": round(seq_tokens, 1),
        "decode_tokens_per_trajectory": dec,
        **figures,
        "trajectories_per_second": round(args.batch / figures["seconds_per_step"], 3),
        "mixed_precision": summary["mixed_precision"],
        "trainable_parameters": summary["trainable_parameters"],
        "projection": projection(figures, args, seq_tokens, dec),
    }  # fmt: skip
    return _write(args, report)


def _write(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit status 0, or 3 when the run ran out of memory."""
    args = parse_args(argv)
    report = run_check(args)
    print(json.dumps(report, indent=2))
    return 3 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())

"""``Trainer``: the restartable training loop, on HF Accelerate (CPU, one GPU, several GPUs,
DeepSpeed ZeRO-1).

Example:
    >>> from latentrag_plugins.training import Trainer, TrainConfig
    >>> cfg = TrainConfig(epochs=5, batch_size=16, lr=1e-4)           # paper defaults
    >>> summary = Trainer("models/init", "data/prepared", "runs/r1", cfg).train()
    >>> # runs/r1 is a LatentRAG checkpoint: LatentRAG.from_pretrained("runs/r1")

Launch on several GPUs with ``accelerate launch -m latentrag_plugins.cli.main train ...``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import LatentRAGError
from ..extras import require
from ..io_utils import write_json_atomic
from .checkpoint import (
    STATE_DIR,
    checkpoint_dir,
    list_checkpoints,
    prune_checkpoints,
    read_trainer_state,
    truncate_log,
    write_trainer_state,
)
from .config import TrainConfig
from .metrics_log import MetricsLog
from .task import Task

log = logging.getLogger(__name__)

CONFIG_FILE, SUMMARY_FILE = "train_config.json", "summary.json"
# Settings that may change when resuming (the rest must match the interrupted run).
_RESUMABLE = {"epochs", "max_steps", "save_every", "save_total_limit", "log_every", "save_merged"}


def zero1_config_path() -> Path:
    """Path of the shipped DeepSpeed ZeRO-1 config (``latentrag_plugins/training/zero1.json``)."""
    return Path(str(resources.files(__package__) / "zero1.json"))


class Trainer:
    """Trains a LatentRAG model (or an explicit agent, ``mode="explicit"``) and saves it.

    Args:
        model: Checkpoint directory (or a loaded model, trained in place): a LatentRAG model, or
            an explicit agent in explicit mode.
        data: Prepared-data directory (``latentrag prepare``) or a loaded ``PreparedData``; in
            explicit mode also a trajectory JSONL file.
        out: Run directory; the final model is saved at its root.
        config: Training settings (default: the paper's).
    """

    def __init__(
        self,
        model: Any,
        data: Any,
        out: str | os.PathLike[str],
        config: TrainConfig | None = None,
    ) -> None:
        self.model_src = model
        self.data_src = data
        self.out = Path(out)
        self.config = config or TrainConfig()
        self.task: Task | None = None
        self.is_main_process = True  # False on the other processes of a distributed run

    # -------------------------------------------------------------------------- setup
    def _accelerator(self) -> Any:
        accelerate = require("accelerate", "train", "training")
        from accelerate.utils import DistributedDataParallelKwargs

        cfg = self.config
        mp = cfg.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        kwargs: dict[str, Any] = {
            "mixed_precision": mp,
            "kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=True)],
        }
        if cfg.deepspeed:
            try:
                import deepspeed  # noqa: F401
            except ImportError as exc:
                raise ImportError(
                    "--deepspeed needs the `deepspeed` package: pip install deepspeed"
                ) from exc
            path = zero1_config_path() if cfg.deepspeed == "zero1" else Path(cfg.deepspeed)
            ds = json.loads(path.read_text())
            ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
            ds["gradient_accumulation_steps"] = 1
            ds["gradient_clipping"] = cfg.max_grad_norm or 0.0
            kwargs["deepspeed_plugin"] = accelerate.DeepSpeedPlugin(hf_ds_config=ds)
        return accelerate.Accelerator(**kwargs)

    def _build_task(self, device: torch.device, show: bool) -> Task:
        if self.config.mode == "explicit":
            from .explicit import explicit_task

            return explicit_task(self.model_src, self.data_src, self.config, device, show)
        from .latent_task import latent_task

        return latent_task(self.model_src, self.data_src, self.config, device, show)

    def _check_out(self, resume: bool) -> tuple[int, Path] | None:
        cfg_file = self.out / CONFIG_FILE
        if self.out.exists() and not self.out.is_dir():
            raise LatentRAGError(f"{self.out}: exists and is not a directory; choose another --out")
        if isinstance(self.model_src, (str, os.PathLike)):
            src = Path(self.model_src)
            if src.exists() and self.out.exists() and os.path.samefile(src, self.out):
                raise LatentRAGError(
                    f"{self.out}: is the starting model too; choose another --out (a run "
                    "directory is replaced by the trained model)"
                )
        if not resume:
            if cfg_file.exists():
                raise LatentRAGError(
                    f"{self.out} already holds a training run; pass --resume to continue it or "
                    "choose another --out"
                )
            if self.out.is_dir() and any(self.out.iterdir()):
                raise LatentRAGError(
                    f"{self.out}: not empty and not a training run; choose a new or empty --out"
                )
            return None
        if not cfg_file.is_file():
            raise LatentRAGError(f"{self.out}: nothing to resume ({CONFIG_FILE} is missing)")
        old = TrainConfig.load(cfg_file).model_dump()
        new = self.config.model_dump()
        diff = [k for k in new if k not in _RESUMABLE | {"library_version"} and old[k] != new[k]]
        if diff:
            raise LatentRAGError(
                f"cannot resume {self.out} with different settings: "
                + ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in diff)
            )
        found = list_checkpoints(self.out)
        if not found:
            log.warning("%s: no complete checkpoint yet; starting from step 0", self.out)
            return None
        return found[-1]

    @staticmethod
    def _optimizer(module: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
        )

    @staticmethod
    def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total: int) -> Any:
        from transformers import get_scheduler

        name = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
        return get_scheduler(
            name, opt, num_warmup_steps=int(cfg.warmup_ratio * total), num_training_steps=total
        )

    # -------------------------------------------------------------------------- training
    def train(
        self, *, resume: bool = False, stop_after: int | None = None, show_progress: bool = True
    ) -> dict[str, Any]:
        """Run training; save checkpoints, the log and the final model under ``out``.

        Args:
            resume: Continue from the newest complete checkpoint in ``out`` (same settings,
                except epochs, max_steps, save_every, save_total_limit, log_every).
            stop_after: Stop once this many optimizer steps are done, after writing a
                checkpoint, without the final export (time-boxed jobs; interruption tests).
            show_progress: Show progress bars.

        Returns:
            The run summary (also written to ``out/summary.json`` when training completes).
        """
        from accelerate.utils import set_seed

        cfg = self.config
        acc = self._accelerator()
        main = self.is_main_process = acc.is_main_process
        latest = self._check_out(resume)
        acc.wait_for_everyone()  # every process checked OUT before the main one writes to it
        set_seed(cfg.seed)
        task = self._build_task(acc.device, show_progress and main)
        self.task = task
        from .batching import BinnedBatches

        planner = BinnedBatches(task.lengths, cfg.batch_size, cfg.n_bins, cfg.seed)
        world, rank = acc.num_processes, acc.process_index
        per_proc = len(planner) // world
        if per_proc == 0:
            raise LatentRAGError(
                f"{len(planner)} batches cannot feed {world} processes; lower --batch-size"
            )
        accum = cfg.gradient_accumulation_steps
        steps_per_epoch = math.ceil(per_proc / accum)
        total = cfg.max_steps or cfg.epochs * steps_per_epoch
        optimizer = self._optimizer(task.module, cfg)
        scheduler = self._scheduler(optimizer, cfg, total)
        module, optimizer = acc.prepare(task.module, optimizer)
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}

        def keep_trainable(models: list, weights: list, output_dir: str) -> None:
            for w in weights:  # checkpoint only what trains; frozen weights come from --model
                for k in [k for k in w if k not in trainable]:
                    del w[k]

        acc.register_save_state_pre_hook(keep_trainable)

        step, epoch, pos = 0, 0, 0
        if latest is not None:
            acc.load_state(str(latest[1] / STATE_DIR), strict=False)
            st = read_trainer_state(latest[1])
            step, epoch, pos = st["step"], st["epoch"], st["pos"]
            scheduler.load_state_dict(st["scheduler"])
            if main:
                truncate_log(self.out / "train_log.jsonl", step)
            log.info("resumed from %s (step %d)", latest[1], step)
        elif resume and main:
            truncate_log(self.out / "train_log.jsonl", 0)  # nothing was saved: start over
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / CONFIG_FILE)
        acc.wait_for_everyone()
        metrics = MetricsLog(self.out, enabled=main)
        bar = tqdm(total=total, initial=step, desc="training", disable=not (main and show_progress))
        names = task.loss_names
        window = torch.zeros(len(names), device=acc.device)  # loss sums since the last log
        window_n, start, start_step = 0, time.perf_counter(), step
        module.train()
        stopped = False
        while step < total and not stopped:
            mine = planner.epoch(epoch)[rank::world][:per_proc]
            while pos < len(mine) and step < total:
                group = mine[pos : pos + accum]
                lr = scheduler.get_last_lr()[0]  # the rate this step uses
                step_losses, grad_norm = self._step(acc, task, module, optimizer, group)
                if not acc.optimizer_step_was_skipped:  # (fp16: an overflow skips the update)
                    scheduler.step()
                pos += len(group)
                step += 1
                window += step_losses
                window_n += 1
                bar.update(1)
                if main and show_progress:
                    bar.set_postfix(
                        {
                            n.replace("loss_", ""): f"{v:.3f}"
                            for n, v in zip(names, step_losses.tolist())
                        }
                    )
                if step % cfg.log_every == 0 or step == total:
                    mean = acc.reduce(window / window_n, reduction="mean").tolist()
                    elapsed = time.perf_counter() - start
                    row = {"step": step, "epoch": epoch, **dict(zip(names, mean))}
                    row["lr"] = lr
                    if grad_norm is not None:
                        row["grad_norm"] = grad_norm
                    row["time"] = round(elapsed, 3)
                    row["steps_per_s"] = round((step - start_step) / max(elapsed, 1e-9), 4)
                    metrics.write(row)
                    window.zero_()
                    window_n = 0
                stop_now = stop_after is not None and step >= stop_after
                if (cfg.save_every and step % cfg.save_every == 0) or stop_now:
                    self._save(acc, task, module, scheduler, step, epoch, pos)
                if stop_now:
                    stopped = True
                    break
            if not stopped:
                epoch, pos = epoch + 1, 0
        bar.close()
        metrics.close()
        elapsed = time.perf_counter() - start
        summary = {
            "steps": step,
            "total_steps": total,
            "epochs": round(step / steps_per_epoch, 3),
            "processes": world,
            "device": str(acc.device),
            "mixed_precision": acc.mixed_precision,
            "seconds": round(elapsed, 2),
            "steps_per_second": round((step - start_step) / max(elapsed, 1e-9), 4),
            "mode": cfg.mode,
            **task.info,
        }
        if stopped:  # checkpointed at the stop; no final export
            summary["stopped"] = True
            task.finish()
            return summary
        acc.wait_for_everyone()
        if main:
            summary["format"] = task.export(acc.unwrap_model(module), self.out)
            write_json_atomic(self.out / SUMMARY_FILE, summary)
        acc.wait_for_everyone()
        task.finish()
        return summary

    def _step(
        self, acc: Any, task: Task, module: Any, optimizer: Any, group: list[list[int]]
    ) -> tuple[torch.Tensor, float | None]:
        """One optimizer step over ``group`` (gradient accumulation over its batches).

        Returns:
            The step's mean losses ``(len(loss_names),)`` and the gradient norm before clipping.
        """
        names = task.loss_names
        step_losses = torch.zeros(len(names), device=acc.device)
        for j, idx in enumerate(group):
            batch = {k: v.to(acc.device) for k, v in task.make_batch(idx).items()}
            last = j == len(group) - 1
            with contextlib.nullcontext() if last else acc.no_sync(module):
                losses = module(batch)
                acc.backward(losses["loss"] / len(group))
            step_losses += torch.stack([losses[n].detach().float() for n in names])
        grad_norm = None
        if self.config.max_grad_norm:
            norm = acc.clip_grad_norm_(module.parameters(), self.config.max_grad_norm)
            grad_norm = None if norm is None else float(norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return step_losses / len(group), grad_norm

    def _save(
        self, acc: Any, task: Task, module: Any, scheduler: Any, step: int, epoch: int, pos: int
    ) -> None:
        """Write ``checkpoints/step-N``: model export, Accelerate state, then the marker."""
        ckpt = checkpoint_dir(self.out, step)
        if acc.is_main_process:
            shutil.rmtree(ckpt, ignore_errors=True)
            ckpt.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(ckpt / STATE_DIR))
        if acc.is_main_process:
            task.export(acc.unwrap_model(module), ckpt)
            state = {"step": step, "epoch": epoch, "pos": pos, "scheduler": scheduler.state_dict()}
            write_trainer_state(ckpt, state)
            prune_checkpoints(self.out, self.config.save_total_limit)
        acc.wait_for_everyone()

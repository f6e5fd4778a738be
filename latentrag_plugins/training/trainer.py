"""``Trainer``: the restartable training loop, on HF Accelerate (CPU, one GPU, several GPUs,
DeepSpeed ZeRO-1).

Example:
    >>> from latentrag_plugins.training import Trainer, TrainConfig
    >>> cfg = TrainConfig(epochs=5, batch_size=16, lr=1e-4)           # paper defaults
    >>> summary = Trainer("models/init", "data/prepared", "runs/r1", cfg).train()
    >>> # runs/r1 is a LatentRAG checkpoint: LatentRAG.from_pretrained("runs/r1")

Launch on several GPUs with ``accelerate launch --multi_gpu --num_processes N -m
latentrag_plugins.cli.main train ...`` (see :mod:`.distributed`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import LatentRAGError
from ..io_utils import write_json_atomic
from .batching import BinnedBatches
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
from .distributed import (
    keep_trainable,
    load_state,
    make_accelerator,
    resolve_mixed_precision,
    save_state,
    trainable_names,
)
from .distributed import zero1_config_path as zero1_config_path  # re-exported
from .metrics_log import MetricsLog, StepMeter
from .task import Task
from .trainable import llm_weight_dtype

log = logging.getLogger(__name__)

CONFIG_FILE, SUMMARY_FILE = "train_config.json", "summary.json"
# Settings that may change when resuming (the rest must match the interrupted run).
_RESUMABLE = {"epochs", "max_steps", "save_every", "save_total_limit", "log_every", "save_merged"}


@dataclass
class _Run:
    """What a run trains with, once prepared by Accelerate."""

    task: Task
    planner: BinnedBatches
    module: Any  # the task's module, wrapped (DDP, DeepSpeed)
    optimizer: Any
    scheduler: Any
    trainable: set[str]  # names of the trainable tensors (unwrapped)
    per_proc: int  # batches per epoch of each process
    steps_per_epoch: int
    total: int  # optimizer steps of the run


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
    def _build_task(self, device: torch.device, show: bool, llm_dtype: torch.dtype) -> Task:
        args = (self.model_src, self.data_src, self.config, device, show)
        if self.config.mode == "explicit":
            from .explicit import explicit_task

            return explicit_task(*args, llm_dtype=llm_dtype)
        from .latent_task import latent_task

        return latent_task(*args, llm_dtype=llm_dtype)

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
        self,
        *,
        resume: bool = False,
        stop_after: int | None = None,
        show_progress: bool = True,
        export: bool = True,
    ) -> dict[str, Any]:
        """Run training; save checkpoints, the log and the final model under ``out``.

        Args:
            resume: Continue from the newest complete checkpoint in ``out`` (same settings,
                except epochs, max_steps, save_every, save_total_limit, log_every).
            stop_after: Stop once this many optimizer steps are done, after writing a
                checkpoint, without the final export (time-boxed jobs; interruption tests).
            show_progress: Show progress bars.
            export: Write checkpoints and the final model. False writes only the log, the
                config and the summary (speed and memory measurements).

        Returns:
            The run summary (also written to ``out/summary.json`` when training completes).
        """
        from accelerate.utils import set_seed

        cfg = self.config
        acc = make_accelerator(cfg)
        main = self.is_main_process = acc.is_main_process
        latest = self._check_out(resume)
        acc.wait_for_everyone()  # every process checked OUT before the main one writes to it
        set_seed(cfg.seed)  # the same initialisation on every process
        run = self._prepare(acc, show_progress and main)
        set_seed(cfg.seed + acc.process_index)  # dropout differs across processes
        at = self._restore(acc, run, latest, resume)
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / CONFIG_FILE)
        acc.wait_for_everyone()
        summary = self._loop(
            acc, run, at, stop_after=stop_after, export=export, show=main and show_progress
        )
        done = not summary.get("stopped")  # a stopped run has its checkpoint, no export
        if done and export:
            acc.wait_for_everyone()
            if main:
                summary["format"] = run.task.export(acc.unwrap_model(run.module), self.out)
        if done and main:
            write_json_atomic(self.out / SUMMARY_FILE, summary)
        acc.wait_for_everyone()
        run.task.finish()
        return summary

    def _prepare(self, acc: Any, show: bool) -> _Run:
        """Build the task, the batch plan, the optimizer and the schedule; wrap for Accelerate."""
        cfg = self.config
        llm_dtype = llm_weight_dtype(cfg, resolve_mixed_precision(cfg))
        task = self.task = self._build_task(acc.device, show, llm_dtype)
        planner = BinnedBatches(task.lengths, cfg.batch_size, cfg.n_bins, cfg.seed)
        per_proc = len(planner) // acc.num_processes
        if per_proc == 0:
            raise LatentRAGError(
                f"{len(planner)} batches cannot feed {acc.num_processes} processes; lower "
                "--batch-size"
            )
        steps_per_epoch = math.ceil(per_proc / cfg.gradient_accumulation_steps)
        total = cfg.max_steps or cfg.epochs * steps_per_epoch
        optimizer = self._optimizer(task.module, cfg)
        scheduler = self._scheduler(optimizer, cfg, total)
        module, optimizer = acc.prepare(task.module, optimizer)
        trainable = trainable_names(acc, module)

        def only_trainable(models: list, weights: list, output_dir: str) -> None:
            for w in weights:  # checkpoint only what trains; frozen weights come from --model
                keep_trainable(w, trainable)

        acc.register_save_state_pre_hook(only_trainable)
        return _Run(
            task, planner, module, optimizer, scheduler, trainable, per_proc, steps_per_epoch, total
        )

    def _restore(
        self, acc: Any, run: _Run, latest: tuple[int, Path] | None, resume: bool
    ) -> tuple[int, int, int]:
        """Load the newest checkpoint's state, if any; returns ``(step, epoch, batch pos)``."""
        if latest is None:
            if resume and acc.is_main_process:
                truncate_log(self.out / "train_log.jsonl", 0)  # nothing was saved: start over
            return 0, 0, 0
        load_state(acc, run.module, latest[1] / STATE_DIR, run.trainable)
        st = read_trainer_state(latest[1])
        run.scheduler.load_state_dict(st["scheduler"])
        if acc.is_main_process:
            truncate_log(self.out / "train_log.jsonl", st["step"])
        log.info("resumed from %s (step %d)", latest[1], st["step"])
        return st["step"], st["epoch"], st["pos"]

    def _loop(
        self,
        acc: Any,
        run: _Run,
        at: tuple[int, int, int],
        *,
        stop_after: int | None,
        export: bool,
        show: bool,
    ) -> dict[str, Any]:
        """Train from ``at`` to the last step (or ``stop_after``); returns the run summary."""
        cfg, task = self.config, run.task
        step, epoch, pos = at
        world, rank = acc.num_processes, acc.process_index
        metrics = MetricsLog(self.out, enabled=acc.is_main_process)
        bar = tqdm(total=run.total, initial=step, desc="training", disable=not show)
        meter = StepMeter(task.loss_names, acc, step)
        run.module.train()
        stopped = False
        while step < run.total and not stopped:
            mine = run.planner.epoch(epoch)[rank::world][: run.per_proc]
            while pos < len(mine) and step < run.total:
                group = mine[pos : pos + cfg.gradient_accumulation_steps]
                lr = run.scheduler.get_last_lr()[0]  # the rate this step uses
                losses, grad_norm = self._step(acc, task, run.module, run.optimizer, group)
                if not acc.optimizer_step_was_skipped:  # (fp16: an overflow skips the update)
                    run.scheduler.step()
                pos += len(group)
                step += 1
                meter.add(losses, sum(task.lengths[i] for idx in group for i in idx))
                bar.update(1)
                if show:
                    bar.set_postfix(
                        {
                            n.replace("loss_", ""): f"{v:.3f}"
                            for n, v in zip(task.loss_names, losses.tolist())
                        }
                    )
                if step % cfg.log_every == 0 or step == run.total:
                    metrics.write(meter.row(step, epoch, lr, grad_norm))
                stopped = stop_after is not None and step >= stop_after
                if export and ((cfg.save_every and step % cfg.save_every == 0) or stopped):
                    self._save(acc, task, run.module, run.scheduler, step, epoch, pos)
                if stopped:
                    break
            if not stopped:
                epoch, pos = epoch + 1, 0
        bar.close()
        metrics.close()
        summary = {
            "steps": step,
            "total_steps": run.total,
            "epochs": round(step / run.steps_per_epoch, 3),
            "processes": world,
            "device": str(acc.device),
            "mixed_precision": resolve_mixed_precision(cfg),  # (DeepSpeed's own, under it)
            **meter.totals(step),
            "mode": cfg.mode,
            **task.info,
        }
        if acc.device.type == "cuda":
            summary["peak_memory_gib"] = round(
                torch.cuda.max_memory_allocated(acc.device) / 2**30, 2
            )
        if stopped:
            summary["stopped"] = True  # checkpointed at the stop; no final export
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
        save_state(acc, ckpt / STATE_DIR)
        if acc.is_main_process:
            task.export(acc.unwrap_model(module), ckpt)
            state = {"step": step, "epoch": epoch, "pos": pos, "scheduler": scheduler.state_dict()}
            write_trainer_state(ckpt, state)
            prune_checkpoints(self.out, self.config.save_total_limit)
        acc.wait_for_everyone()

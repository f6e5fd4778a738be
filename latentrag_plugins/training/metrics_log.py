"""``MetricsLog``: training metrics as JSON lines (``OUT/train_log.jsonl``) and, when the
``tensorboard`` package is installed, as TensorBoard scalars (``OUT/tensorboard/``);
``StepMeter``: the numbers of those lines, gathered over every process."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per logged step; mirrors numbers to TensorBoard if available.

    Args:
        out: Run directory.
        enabled: False on non-main processes (writes nothing).
        tensorboard: Try to write TensorBoard events too.
    """

    def __init__(self, out: Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = out / "train_log.jsonl"
        self.enabled = enabled
        self.tb: Any = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.debug("tensorboard is not installed; logging to JSONL only")

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` (must hold ``step``) and flush."""
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])
            self.tb.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()


class StepMeter:
    """Loss means between log lines, and tokens and speed, over all processes of a run.

    Args:
        names: Loss names, in the order of the loss vectors passed to :meth:`add`.
        acc: The run's ``accelerate.Accelerator`` (its ``reduce`` gathers the processes).
        start_step: The step training starts (or resumes) from.
    """

    def __init__(self, names: list[str], acc: Any, start_step: int) -> None:
        self.names = names
        self.acc = acc
        self.losses = torch.zeros(len(names), device=acc.device)  # sums since the last line
        self.n = 0
        self.tokens = torch.zeros(2, dtype=torch.long, device=acc.device)  # (since line, total)
        self.start_step = start_step
        self.start = time.perf_counter()

    def add(self, losses: torch.Tensor, tokens: int) -> None:
        """Count one optimizer step of this process: its mean losses and its tokens."""
        self.losses += losses
        self.n += 1
        self.tokens += tokens

    def row(self, step: int, epoch: int, lr: float, grad_norm: float | None) -> dict[str, Any]:
        """A log line (every process calls it): loss means since the last line, ``tokens``
        trained on since then, ``time`` (s), ``steps_per_s`` and ``tokens_per_s`` since the
        start."""
        mean = self.acc.reduce(self.losses / max(self.n, 1), reduction="mean").tolist()
        window, total = self.acc.reduce(self.tokens, reduction="sum").tolist()
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        row: dict[str, Any] = {"step": step, "epoch": epoch, **dict(zip(self.names, mean))}
        row["lr"] = lr
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        row["time"] = round(elapsed, 3)
        row["steps_per_s"] = round((step - self.start_step) / elapsed, 4)
        row["tokens"] = int(window)
        row["tokens_per_s"] = round(total / elapsed, 1)
        self.losses.zero_()
        self.n = 0
        self.tokens[0] = 0
        return row

    def totals(self, step: int) -> dict[str, Any]:
        """Summary figures since the start (every process calls it)."""
        total = int(self.acc.reduce(self.tokens, reduction="sum")[1])
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {
            "seconds": round(elapsed, 2),
            "steps_per_second": round((step - self.start_step) / elapsed, 4),
            "tokens": total,
            "tokens_per_second": round(total / elapsed, 1),
        }

"""``Task``: what the generic training loop needs from a kind of training run.

The loop in :mod:`.trainer` is the same for LatentRAG training (:mod:`.latent_task`) and explicit
SFT (:mod:`.explicit`): a module that returns a dict of losses (``loss`` is optimised), example
lengths for length-binned batching, a collate function and an export function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class Task:
    """A prepared training job.

    Attributes:
        module: ``forward(batch) -> {"loss": ..., other scalar losses}``; prepared by Accelerate.
        lengths: Token length of each example (for binning).
        make_batch: Example indices -> batch of CPU tensors.
        export: ``export(module, dest)`` saves the trained model into directory ``dest`` and
            returns a short description of the format.
        loss_names: Losses to log, in order (``loss`` first).
        info: Facts for the summary (examples, skipped, trainable parameters, ...).
        finish: Called after training (e.g. to restore inference settings).
    """

    module: nn.Module
    lengths: list[int]
    make_batch: Callable[[list[int]], dict[str, torch.Tensor]]
    export: Callable[[nn.Module, Path], str]
    loss_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    finish: Callable[[], None] = lambda: None


def skip_report(reasons: dict[str, int]) -> str:
    """``"3 skipped (2: too long, 1: too many steps)"``-style summary."""
    total = sum(reasons.values())
    if not total:
        return "none skipped"
    parts = ", ".join(f"{n}: {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
    return f"{total} skipped ({parts})"

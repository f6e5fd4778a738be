"""``MetricsLog``: training metrics as JSON lines (``OUT/train_log.jsonl``) and, when the
``tensorboard`` package is installed, as TensorBoard scalars (``OUT/tensorboard/``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

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

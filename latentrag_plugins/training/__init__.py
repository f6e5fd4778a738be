"""Training LatentRAG from explicit agent trajectories (paper §4.4, Appendix B).

Kept apart from inference: nothing outside this package imports it. Heavy modules load on first
use, so importing the package does not import peft or accelerate.

Pipeline:

1. :func:`import_transcripts` (``latentrag import-trajectories``): Search-R1 / AutoRefine
   transcripts -> trajectories (:class:`Trajectory`), keeping correct ones.
2. :func:`prepare` (``latentrag prepare``): reference subquery embeddings, top-16
   pseudo-relevant documents and β -> :class:`PreparedData`.
3. :class:`Trainer` with :class:`TrainConfig` (``latentrag train``): L = L_gen + λ_ret·L_ret +
   L_dec, LoRA or full fine-tuning, checkpoints and resume, on Accelerate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import TrainConfig  # noqa: F401
    from .evaluate import retrieval_overlap  # noqa: F401
    from .preparation import prepare  # noqa: F401
    from .prepared import PreparedData  # noqa: F401
    from .trainer import Trainer  # noqa: F401
    from .trajectories import Trajectory, read_trajectories  # noqa: F401
    from .transcripts import import_transcripts  # noqa: F401

_LAZY = {
    "TrainConfig": ".config",
    "Trainer": ".trainer",
    "PreparedData": ".prepared",
    "prepare": ".preparation",
    "Trajectory": ".trajectories",
    "TrajectoryError": ".trajectories",
    "read_trajectories": ".trajectories",
    "write_trajectories": ".trajectories",
    "import_transcripts": ".transcripts",
    "build_example": ".sequences",
    "retrieval_overlap": ".evaluate",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

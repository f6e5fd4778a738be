"""The demo checkpoints and data shipped inside the package, and the names that resolve to them.

``"demo"`` is the shipped LatentRAG model and ``"demo-explicit"`` the explicit Search-R1-style
agent trained from the same base LLM and trajectories (see ``docs/demo-model.md``). Every command
and ``from_pretrained`` accepts these names wherever a checkpoint directory is expected.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_CHECKPOINTS = {"demo": ASSETS / "latentrag", "demo-explicit": ASSETS / "explicit"}
DEMO_CORPUS = ASSETS / "world" / "corpus.jsonl"
DEMO_QUESTIONS = ASSETS / "world" / "questions_test.jsonl"


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Map ``"demo"`` / ``"demo-explicit"`` to the shipped checkpoints; other paths pass through.

    Raises:
        CheckpointError: A demo name was given but this installation ships no such checkpoint.
    """
    name = os.fspath(path)
    if name in DEMO_CHECKPOINTS and not Path(name).exists():
        target = DEMO_CHECKPOINTS[name]
        if (
            not (target / "config.json").is_file()
            and not (target / "explicit_config.json").is_file()
        ):
            raise CheckpointError(
                f"the {name!r} checkpoint is not shipped in this installation ({target}); "
                "see docs/demo-model.md to build it"
            )
        return target
    return Path(name)

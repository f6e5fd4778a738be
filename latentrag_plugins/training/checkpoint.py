"""Training outputs: the model export (a normal LatentRAG checkpoint) and resumable checkpoints.

Run directory layout::

    OUT/config.json, tokenizer/, llm/ | llm_adapter/ ...   final model: LatentRAG.from_pretrained(OUT)
    OUT/train_config.json                                  TrainConfig of the run
    OUT/train_log.jsonl                                    one line per logged step
    OUT/summary.json                                       steps, time, steps/s (written at the end)
    OUT/checkpoints/step-N/                                a LatentRAG checkpoint of step N, plus
        train_state/                                       Accelerate state: trainable weights,
                                                           optimizer, scheduler, RNG states
        trainer_state.json                                 step, epoch, batch position (written
                                                           last: a checkpoint without it is
                                                           incomplete and ignored)
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io_utils import write_json_atomic
from ..model import MODEL_ENTRIES  # cleared before a new export into a directory

if TYPE_CHECKING:
    from ..model import LatentRAG

STATE_DIR, STATE_FILE, CKPT_DIR = "train_state", "trainer_state.json", "checkpoints"
_STEP = re.compile(r"^step-(\d+)$")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def base_reloadable(base_model: str) -> bool:
    """Whether a LoRA checkpoint's base model can be loaded again: a local directory or a hub
    id ``org/name`` (not ``random:tiny`` or an in-memory model)."""
    return Path(base_model).is_dir() or _HUB_ID.fullmatch(base_model) is not None


def export_model(model: LatentRAG, dest: Path, *, merged: bool = False) -> str:
    """Save ``model`` as a LatentRAG checkpoint *into* directory ``dest`` (which may hold other
    files, e.g. the run's logs). ``config.json`` is written last, so a partly written export is
    never mistaken for a complete one.

    A LoRA model is saved as an adapter when its base model can be reloaded, else (or with
    ``merged``) with merged full weights. Returns ``"adapter"`` or ``"full"``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    llm = model.llm
    is_peft = hasattr(llm, "peft_config") and hasattr(llm, "get_base_model")
    kind = "full"
    if is_peft and not merged and base_reloadable(model.config.base_model):
        kind = "adapter"
    elif is_peft:
        model.llm = copy.deepcopy(llm).merge_and_unload()
    use_cache = getattr(model.llm.config, "use_cache", True)
    model.llm.config.use_cache = True
    tmp = dest / ".export-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
    finally:
        model.llm.config.use_cache = use_cache
        model.llm = llm
    for name in MODEL_ENTRIES:
        p = dest / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    entries = sorted(tmp.iterdir(), key=lambda p: p.name == "config.json")
    for entry in entries:
        entry.rename(dest / entry.name)
    tmp.rmdir()
    return kind


def checkpoint_dir(out: Path, step: int) -> Path:
    """``OUT/checkpoints/step-N``."""
    return out / CKPT_DIR / f"step-{step}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run (those with ``trainer_state.json``), oldest first."""
    root = out / CKPT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP.match(p.name)
        if m and (p / STATE_FILE).is_file() and (p / STATE_DIR).is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def write_trainer_state(ckpt: Path, state: dict[str, Any]) -> None:
    """Write the marker that completes a checkpoint."""
    write_json_atomic(ckpt / STATE_FILE, state)


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """Read a checkpoint's ``trainer_state.json``."""
    return json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))


def prune_checkpoints(out: Path, keep: int | None) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (None: keep all)."""
    if keep is None:
        return
    for _, p in list_checkpoints(out)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines of steps after ``step`` (when resuming from an earlier checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                keep.append(line + "\n")
        except (ValueError, AttributeError):
            continue
    from ..io_utils import write_text_atomic

    write_text_atomic(path, "".join(keep))

"""Helpers shared by CLI commands: model/index resolution and printing."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_model_arg(
    p: argparse.ArgumentParser,
    required: bool = True,
    what: str = "LatentRAG checkpoint directory",
    explicit: bool = False,
) -> None:
    """``--model DIR``: a checkpoint directory, or ``demo`` (and, where an explicit agent will
    do, ``demo-explicit``) for the shipped ones; and ``--trust-remote-code``."""
    shipped = (
        "`demo`, `demo-explicit`: the shipped demo checkpoints"
        if explicit
        else ("`demo`: the shipped demo model")
    )
    p.add_argument("--model", required=required, metavar="DIR", help=f"{what} ({shipped}).")
    add_trust_arg(p)


def add_trust_arg(p: argparse.ArgumentParser) -> None:
    """``--trust-remote-code``: run custom model code that checkpoints need (never implied)."""
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="Run custom model code that the checkpoints' models need (only for sources you "
        "trust; a checkpoint's config never turns this on).",
    )


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """``--device``: where to run (default: CUDA when available, else CPU)."""
    p.add_argument("--device", default=None, help="Device, e.g. cpu or cuda (default: auto).")


DTYPES = ("auto", "float32", "bfloat16", "float16", "mixed")


def add_extractive_arg(p: argparse.ArgumentParser, who: str = "Every method's answer") -> None:
    """``--extractive``: answers quote one span of their question and documents."""
    p.add_argument(
        "--extractive",
        action="store_true",
        help=f"{who} quotes one span of its question and documents (`extractive_answers`; "
        "default: as the checkpoint's config says).",
    )


AUTO_DTYPE = (
    "the fastest for the device, as from_pretrained's default: bfloat16 on GPU; on CPU mixed "
    "where it multiplies bfloat16 natively (AMX, AVX512-BF16), else float32"
)


def add_dtype_arg(
    p: argparse.ArgumentParser, flag: str = "--dtype", what: str = "the model"
) -> None:
    """``--dtype``: the weights' dtype (default auto, the same in every command)."""
    p.add_argument(
        flag,
        choices=DTYPES,
        default="auto",
        help=f"Dtype of {what} (default auto: {AUTO_DTYPE}; mixed: float32, with passes over "
        "many tokens and the retriever towers on a bfloat16 copy).",
    )


def dtype_kwargs(name: str | None) -> dict[str, Any]:
    """A ``--dtype`` choice -> ``from_pretrained`` keywords ``dtype`` and ``wide_dtype``."""
    if name in (None, "auto"):
        return {"dtype": None, "wide_dtype": None}
    import torch

    from ..speed.precision import MIXED, MIXED_DTYPES

    if name == MIXED:
        return dict(zip(("dtype", "wide_dtype"), MIXED_DTYPES))
    return {"dtype": getattr(torch, name), "wide_dtype": None}


def load_model(
    path: str, device: str | None = None, dtype: str | None = None, trust: bool = False
) -> Any:
    """Load a LatentRAG checkpoint, with the library's default thread count in this thread
    (:func:`latentrag_plugins.threads.apply_default`: one on a machine with 2 CPUs)."""
    from .. import threads
    from ..model import LatentRAG

    threads.apply_default()

    return LatentRAG.from_pretrained(
        path, device=device, trust_remote_code=trust, **dtype_kwargs(dtype)
    )


def load_index(path: str, model: Any) -> Any:
    """Load a FAISS index directory and check it against the model's document tower."""
    from ..store.faiss_store import FaissStore

    return FaissStore.load(path, encoder_id=model.encoder_id, dim=model.dim)


def print_json(obj: Any) -> None:
    """Print ``obj`` (a pydantic model or JSON-able object) as JSON on stdout."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def check_plot_extra(plot: str | None) -> None:
    """Before any work: ``--plot`` without matplotlib fails, naming the ``[plot]`` extra."""
    if plot:
        from ..extras import require

        require("matplotlib", "plot", "the latency chart (--plot)")


def check_output_files(*paths: str | None, inputs: Sequence[str | None] = ()) -> None:
    """Refuse, before any long work, output file paths that could not be written (an existing
    directory, a path under a file) or that are one of the ``inputs``, or each other. None and
    ``-`` (stdout) pass."""
    written: list[Path] = []
    for p in paths:
        if p is None or p == "-":
            continue
        path = Path(p)
        if path.is_dir():
            raise ValueError(f"{p}: is a directory; give a file path")
        _check_ancestors(path)
        for other in [*(Path(i) for i in inputs if i), *written]:
            if _same_file(path, other):
                raise ValueError(f"{p}: is also {other}, which this command reads or writes")
        written.append(path)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def check_output_dir(p: str, refusal: Callable[[str], str | None] | None = None) -> None:
    """Refuse, before any long work, an output directory path that is an existing file, or
    that ``refusal`` gives a reason not to replace."""
    path = Path(p)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{p}: is a file; give a directory path")
    _check_ancestors(path)
    if refusal is not None and (why := refusal(p)) is not None:
        raise ValueError(why)


def _check_ancestors(path: Path) -> None:
    """Raise if the nearest existing ancestor of ``path`` is a file."""
    ancestor = next((a for a in path.parents if a.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise ValueError(f"{path}: {ancestor} is a file, not a directory")


def method_settings(method: Any, max_steps: int | None) -> dict[str, Any]:
    """What the report records about a method's run: its LLM dtype, answer mode and step
    budget (``--max-steps``, else the checkpoint's ``max_steps`` or ``max_turns``; naive RAG:
    1)."""
    from ..baselines.naive import NaiveRAG
    from ..speed.precision import precision_name

    if isinstance(method, NaiveRAG):
        return {**method_settings(method.model, None), "max_steps": 1}
    cfg = method.config
    if max_steps is None:
        max_steps = cfg.max_steps if hasattr(cfg, "max_steps") else cfg.max_turns
    return {
        "dtype": precision_name(method),
        "extractive_answers": cfg.extractive_answers,
        "max_steps": max_steps,
    }

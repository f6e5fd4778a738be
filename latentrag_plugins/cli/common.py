"""Helpers shared by CLI commands: model/index resolution and printing."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_model_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--model DIR``: a LatentRAG checkpoint directory."""
    p.add_argument(
        "--model", required=required, metavar="DIR", help="LatentRAG checkpoint directory."
    )


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """``--device``: where to run (default: CUDA when available, else CPU)."""
    p.add_argument("--device", default=None, help="Device, e.g. cpu or cuda (default: auto).")


def load_model(path: str, device: str | None = None) -> Any:
    """Load a LatentRAG checkpoint."""
    from ..model import LatentRAG

    return LatentRAG.from_pretrained(path, device=device)


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

"""Baselines for LatentRAG: an explicit Search-R1-protocol agent and naive RAG.

``ExplicitAgent``, ``ExplicitConfig``, ``ExplicitForce`` and ``NaiveRAG`` are imported lazily
from their modules (``explicit``, ``explicit_config``, ``explicit_force``, ``naive``), so
importing this package stays light. The protocol text lives in ``search_r1``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ExplicitAgent": "explicit",
    "ExplicitConfig": "explicit_config",
    "ExplicitForce": "explicit_force",
    "NaiveRAG": "naive",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

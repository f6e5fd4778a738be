"""latentrag_plugins: LatentRAG, agentic RAG that reasons and retrieves in latent space.

Heavy modules load on first use, so ``import latentrag_plugins`` stays light and never imports
optional packages (faiss, peft, langchain, llama_index).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .config import LatentRAGConfig  # noqa: F401
    from .model import LatentRAG  # noqa: F401
    from .results import LatentRAGResult, RetrievedDoc, Step, Timings  # noqa: F401
    from .store.faiss_store import FaissStore  # noqa: F401

_LAZY = {
    "LatentRAG": ".model",
    "LatentRAGConfig": ".config",
    "LatentRAGResult": ".results",
    "RetrievedDoc": ".results",
    "Step": ".results",
    "Timings": ".results",
    "FaissStore": ".store.faiss_store",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

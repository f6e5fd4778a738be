"""Import helpers for optional dependencies: a missing extra names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """Import an optional module, or raise an ImportError naming the extra that provides it.

    Args:
        module: Dotted module name, e.g. ``"faiss"``.
        extra: Name of the ``latentrag-plugins`` extra that installs it, e.g. ``"faiss"``.
        purpose: Optional words on what needs the module, for the error message.

    Returns:
        The imported module.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        need = f" for {purpose}" if purpose else ""
        raise ImportError(
            f"`{module}` is needed{need} but is not installed. "
            f'Install it with: pip install "latentrag-plugins[{extra}]"'
        ) from exc

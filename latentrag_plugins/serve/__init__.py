"""The LatentRAG service: the model behind an HTTP API on Ray Serve, and its client.

- :class:`ServeConfig`, :func:`build_app` / :func:`app_builder` (the Ray Serve application),
  :func:`launch` / :func:`stop` (what ``latentrag serve`` runs): need the ``[serve]`` extra.
- :class:`RemoteLatentRAG` (a service used as a model's engine is) and its errors
  (:class:`ServiceError`, :class:`ServiceUnavailable`, :class:`ServiceRequestError`): need
  only ``httpx``.
- :mod:`.loadtest`: a load test against a service.

Modules load on first use: importing this package imports neither Ray nor httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import (  # noqa: F401
        RemoteLatentRAG,
        ServiceError,
        ServiceRequestError,
        ServiceUnavailable,
    )
    from .config import ServeConfig  # noqa: F401
    from .deployment import app_builder, build_app  # noqa: F401
    from .launcher import ServiceStartError, launch, stop  # noqa: F401
    from .schema import AskRequest  # noqa: F401

_LAZY = {
    "AskRequest": ".schema",
    "RemoteLatentRAG": ".client",
    "ServeConfig": ".config",
    "ServiceError": ".client",
    "ServiceRequestError": ".client",
    "ServiceStartError": ".launcher",
    "ServiceUnavailable": ".client",
    "app_builder": ".deployment",
    "build_app": ".deployment",
    "launch": ".launcher",
    "stop": ".launcher",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

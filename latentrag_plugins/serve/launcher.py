"""Starting and stopping a LatentRAG service on Ray: on a local Ray instance, or on the cluster
that ``address`` (or ``RAY_ADDRESS``) names. ``latentrag serve`` and the load test use these."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from ..errors import LatentRAGError
from ..extras import require
from .config import ServeConfig

APP_NAME = "latentrag"


class ServiceStartError(LatentRAGError):
    """The service's replicas did not start (the model or the store did not load)."""


def launch(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    name: str = APP_NAME,
    route_prefix: str = "/",
    **options: Any,
) -> str:
    """Serve ``config`` on Ray Serve and wait until every replica is ready.

    Connects to Ray if this process is not connected yet: to ``address`` (or ``RAY_ADDRESS``),
    else to a new local instance. Ray Serve's HTTP proxy listens on ``host:port`` (on a Ray
    instance whose Serve runs already, its own host and port stay).

    Args:
        config: What to serve.
        host: The address Ray Serve's HTTP proxy listens on.
        port: Its port.
        address: The Ray cluster (None: ``RAY_ADDRESS``, else a new local instance).
        name: The application's name in Ray Serve.
        route_prefix: Where its API is (``/``: ``/v1/ask``, ``/health``, ...).
        **options: Ray Serve deployment options (see :func:`~.deployment.build_app`).

    Returns:
        The service's URL.

    Raises:
        ServiceStartError: A replica or the HTTP proxy failed to start (the message says why,
            e.g. a store that does not match the model, or a port in use).
    """
    from ray import serve

    from .deployment import build_app

    connect(config, address)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(config, **options), name=name, route_prefix=route_prefix)
    except RuntimeError as exc:
        raise ServiceStartError(f"the service did not start: {_why(name, exc)}") from exc
    return (
        f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}{route_prefix}".rstrip(
            "/"
        )
    )


def connect(config: ServeConfig, address: str | None = None, **init_options: Any) -> None:
    """Connect this process to Ray, unless it is: to ``address`` (None: ``RAY_ADDRESS``, else a
    new local instance), where a store factory's module in the working directory imports.
    ``init_options`` go to ``ray.init``."""
    ray = require("ray", "serve", "the LatentRAG service")
    if not ray.is_initialized():
        ray.init(address=address, runtime_env=_importable_here(config), **init_options)


def stop(name: str = APP_NAME, *, disconnect: bool = True) -> None:
    """Delete the application, stop Ray Serve if it serves nothing else, and (``disconnect``)
    leave Ray (a local instance this process started stops)."""
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    if not ray.is_initialized():
        return
    try:
        serve.delete(name)
        if not serve.status().applications:
            serve.shutdown()
    except RayServeException:  # Ray Serve did not start: nothing to stop
        pass
    finally:
        if disconnect:
            ray.shutdown()


def _importable_here(config: ServeConfig) -> dict[str, Any] | None:
    """A runtime environment in which a store factory's module in the working directory imports
    (as it does here): the working directory on the replicas' ``PYTHONPATH``."""
    if config.store_factory is None:
        return None
    path = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}}


def _why(name: str, exc: BaseException) -> str:
    """Why the application did not start: the last error of its replicas' tracebacks (Ray
    Serve's own exception only says that it failed)."""
    from ray import serve

    try:
        status = serve.status().applications[name]
        text = "\n".join(
            [str(exc), status.message, *(d.message for d in status.deployments.values())]
        )
    except Exception:  # Serve is gone too: its exception is all there is
        text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception): ", ln)]
    last = (errors or lines or [type(exc).__name__])[-1]
    return re.sub(r"^(\w+\.)+(?=\w+: )", "", last)[:1000]  # StoreError: ..., not a.b.StoreError

"""The LatentRAG service as a Ray Serve application: one deployment whose replicas each load
the model and the store, and serve the HTTP API with the model's engine.

``build_app(config)`` gives the application for ``serve.run`` (or your own Ray setup);
``app_builder`` is the same for Ray's ``serve run`` command and config files::

    serve run latentrag_plugins.serve.deployment:app_builder model=demo index=./index
"""

# No `from __future__ import annotations` here: FastAPI must see the routes' real annotations
# (a string "Request" would become a query parameter).
from typing import Any

from ..extras import require

serve = require("ray.serve", "serve", "the LatentRAG service")

from fastapi import FastAPI, Request, Response  # noqa: E402

from . import api  # noqa: E402
from .config import ServeConfig  # noqa: E402

DEPLOYMENT_NAME = "LatentRAG"


app = FastAPI(**api.INFO)


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(app)
class LatentRAGDeployment:
    """A replica: a :class:`~.service.Service` behind the HTTP API of :mod:`.api`.

    Args:
        config: A :class:`ServeConfig` as a dict.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        from .service import Service

        self.service = Service(ServeConfig.model_validate(config))

    @app.post("/v1/ask", **api.ASK_ROUTE)
    async def ask(self, request: Request) -> Response:
        return await api.ask(self.service, request)

    @app.post("/v1/ask/stream", **api.STREAM_ROUTE)
    async def ask_stream(self, request: Request) -> Response:
        return await api.ask_stream(self.service, request)

    @app.get("/health", **api.HEALTH_ROUTE)
    async def health(self) -> dict[str, Any]:
        return self.service.health()

    def __del__(self) -> None:  # Ray Serve stops the replica: cancel what is left
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


def build_app(config: ServeConfig, **options: Any) -> Any:
    """The Ray Serve application that serves ``config``.

    Args:
        config: What to serve, and the replicas' count and resources.
        **options: Ray Serve deployment options that replace the config's (``num_replicas``,
            ``ray_actor_options``, ``max_ongoing_requests``, ...); with ``autoscaling_config``,
            the autoscaler sets the replicas.

    Returns:
        The application, for ``serve.run(app, route_prefix="/")``.
    """
    deployment_options: dict[str, Any] = {
        "num_replicas": config.replicas,
        "max_ongoing_requests": config.ongoing_requests,
        "ray_actor_options": {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        **options,
    }
    if "autoscaling_config" in options and "num_replicas" not in options:
        del deployment_options["num_replicas"]  # the autoscaler decides
    return LatentRAGDeployment.options(**deployment_options).bind(config.model_dump())


def app_builder(args: dict[str, Any]) -> Any:
    """:func:`build_app` for Ray's ``serve run`` and config files: ``args`` are
    :class:`ServeConfig` fields (``model``, ``index`` or ``store_factory``, ``replicas``, ...)."""
    return build_app(ServeConfig(**args))

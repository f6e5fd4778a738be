"""``Service``: what one replica serves: a model, its engine and its store.

Requests go to the model's engine (``model.engine``), which batches and cancels; the service
only turns requests into engine submissions and handles into JSON, and errors into HTTP status
codes (:func:`error_status`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..engine import EngineBusy, RequestCancelled, RequestHandle
from ..errors import StoreError
from ..results import LatentRAGResult
from .config import ServeConfig
from .schema import AskRequest, error_body, event_line, result_line
from .stores import ServedStore, load_store

if TYPE_CHECKING:
    from ..model import LatentRAG


class Service:
    """A model and its store, serving requests through the model's engine.

    Args:
        config: What to serve; its ``max_batch`` and ``max_queue`` configure the engine.
        model: The model, if already loaded (else loaded from ``config.model``).
        store: The store, if already open (else opened from ``config``).

    Raises:
        CheckpointError: The model does not load.
        StoreError: The store does not open, or does not match the model's document tower.
    """

    def __init__(
        self, config: ServeConfig, model: LatentRAG | None = None, store: ServedStore | None = None
    ) -> None:
        self.config = config
        self.model = model if model is not None else _load_model(config)
        self.engine = self.model.set_engine(max_batch=config.max_batch, max_queue=config.max_queue)
        self.store = store if store is not None else load_store(config, self.model)
        self.engine.warmup()  # one-off costs before the first request, not in it

    def submit(self, request: AskRequest) -> RequestHandle:
        """Send a request to the engine; returns its handle at once.

        Raises:
            ValueError: The question is too long for the model's context.
            EngineBusy: The replica's queue is full.
        """
        return self.engine.submit(request.question, self.store.search, **request.options())

    async def ask(self, request: AskRequest) -> LatentRAGResult:
        """Answer a request (cancelling the awaiting task cancels it)."""
        return await self.submit(request).aresult()

    async def stream(self, handle: RequestHandle) -> AsyncIterator[str]:
        """A request's NDJSON lines: its events as they come, then its result or its error.
        Closing the stream early (the client went away) cancels the request."""
        try:
            async for event in handle.aevents():
                yield event_line(event)
            yield result_line(handle.result())  # it has ended: no wait
        except Exception as exc:
            yield error_body(*error_status(exc)) + "\n"

    def health(self) -> dict[str, Any]:
        """The replica's state: ready (or busy: new requests are refused), and what it serves."""
        load, engine = self.engine.load, self.engine.config
        busy = load >= engine.max_batch + engine.max_queue
        return {
            "status": "busy" if busy else "ready",
            "version": __version__,
            "model": {
                "name": self.config.model,
                "device": str(self.model.device),
                "config": self.model.config.model_dump(mode="json"),
            },
            "encoder": {"id": self.model.encoder_id, "dim": self.model.dim},
            "store": self.store.info(),
            "engine": {
                "max_batch": engine.max_batch,
                "max_queue": engine.max_queue,
                "in_flight": load,
                "mean_batch": round(self.engine.stats.mean_batch, 2),
            },
            "replica": {"pid": os.getpid()},
        }

    def close(self) -> None:
        """Cancel every request and stop the engine."""
        self.engine.close()


def error_status(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and message of a request's error: 400 for a bad request, 502 for a
    failed store search, 503 when the replica is full or stopping, 500 for anything else."""
    if isinstance(exc, EngineBusy):
        return 503, str(exc)
    if isinstance(exc, RequestCancelled):
        return 503, f"the replica stopped before the answer ({exc})"
    if isinstance(exc, StoreError):
        return 502, f"store error: {exc}"
    if isinstance(exc, ValueError):
        return 400, f"bad request: {exc}"
    return 500, f"internal error: {type(exc).__name__}: {exc}"


def _load_model(config: ServeConfig) -> LatentRAG:
    from ..cli.common import dtype_kwargs
    from ..model import LatentRAG

    return LatentRAG.from_pretrained(
        config.model, device=config.device, trust_remote_code=config.trust_remote_code,
        **dtype_kwargs(config.dtype),
    )  # fmt: skip

"""Instrumentation events for latent steps and decoded thoughts, and their workflow-stream twins.

The dispatchers are registered top-down (``latentrag_plugins`` -> ``latentrag_plugins.llama_index``
-> one per module), so a handler added to any of them sees the events of the whole subtree::

    from llama_index.core.instrumentation import get_dispatcher

    get_dispatcher("latentrag_plugins").add_event_handler(MyHandler())

Events also propagate to LlamaIndex's root dispatcher, so observability integrations see them.
Inside :func:`stream_events_to` (used by :meth:`LatentRAGQueryEngine.as_tool`), every event is
also written to a workflow ``Context``'s event stream as a :class:`LatentStepStreamEvent` or
:class:`LatentThoughtStreamEvent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, Literal

from llama_index.core.instrumentation import Dispatcher, get_dispatcher
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.workflow import Event

ROOT_DISPATCHER = "latentrag_plugins"
PACKAGE_DISPATCHER = "latentrag_plugins.llama_index"

# Parents first: get_dispatcher() links a new dispatcher to its parent only if that exists.
get_dispatcher(ROOT_DISPATCHER)
get_dispatcher(PACKAGE_DISPATCHER)

Action = Literal["retrieve", "answer"]


class LatentStepEvent(BaseEvent):
    """One latent step finished: what it chose and what it retrieved.

    Attributes:
        question: The question being answered.
        step: 0-based step index.
        action: ``"retrieve"`` or ``"answer"``.
        forced: True if the answer was forced (``max_steps`` or context budget).
        node_ids: Ids of the nodes the step retrieved, in rank order (empty when answering).
        scores: Their vector-store scores.
    """

    question: str
    step: int
    action: Action
    forced: bool = False
    node_ids: list[str] = []
    scores: list[float | None] = []

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "LatentStepEvent"


class LatentThoughtEvent(BaseEvent):
    """The decoded text of a step's latent thought and subquery (only with ``decode=True``).

    Attributes:
        question: The question being answered.
        step: 0-based step index.
        thought: The decoded latent thought.
        subquery: The decoded latent subquery (None on the answer step).
    """

    question: str
    step: int
    thought: str | None = None
    subquery: str | None = None

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "LatentThoughtEvent"


class LatentStepStreamEvent(Event):
    """A :class:`LatentStepEvent` written to a workflow / agent event stream."""

    question: str
    step: int
    action: Action
    forced: bool = False
    node_ids: list[str] = []
    scores: list[float | None] = []


class LatentThoughtStreamEvent(Event):
    """A :class:`LatentThoughtEvent` written to a workflow / agent event stream."""

    question: str
    step: int
    thought: str | None = None
    subquery: str | None = None


_STREAM_TYPES: dict[type[BaseEvent], type[Event]] = {
    LatentStepEvent: LatentStepStreamEvent,
    LatentThoughtEvent: LatentThoughtStreamEvent,
}
_FIELDS = ("question", "step", "action", "forced", "node_ids", "scores", "thought", "subquery")

# Where events are also written (a workflow Context's write_event_to_stream), if anywhere.
_sink: contextvars.ContextVar[Callable[[Event], None] | None] = contextvars.ContextVar(
    "latentrag_llama_index_stream_sink", default=None
)


def to_stream_event(event: LatentStepEvent | LatentThoughtEvent) -> Event:
    """Convert an instrumentation event to its workflow-stream twin."""
    cls = _STREAM_TYPES[type(event)]
    return cls(**{f: getattr(event, f) for f in _FIELDS if f in cls.model_fields})


@contextlib.contextmanager
def stream_events_to(ctx: Any) -> Iterator[None]:
    """Also write LatentRAG events to a workflow ``Context``'s event stream inside the block.

    Use it in a ``Workflow`` step (the agent tool from ``as_tool`` does it for you)::

        with stream_events_to(ctx):
            response = await engine.aquery(ev.question)

    Args:
        ctx: A workflow ``Context`` (anything with ``write_event_to_stream(event)``).
    """
    token = _sink.set(_on_loop_of_caller(ctx.write_event_to_stream))
    try:
        yield
    finally:
        _sink.reset(token)


def _on_loop_of_caller(write: Callable[[Event], None]) -> Callable[[Event], None]:
    """``write``, called on the event loop running now (if any) from whichever thread calls it:
    a workflow's event stream is not thread-safe, and a streaming engine's worker thread emits."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return write

    def on_loop(event: Event) -> None:
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            write(event)
        else:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody listens
                loop.call_soon_threadsafe(write, event)

    return on_loop


def emit(dispatcher: Dispatcher, event: LatentStepEvent | LatentThoughtEvent) -> None:
    """Dispatch ``event`` (inside the caller's span) and forward it to the active stream, if any
    (on the stream's event loop)."""
    dispatcher.event(event)
    sink = _sink.get()
    if sink is not None:
        sink(to_stream_event(event))

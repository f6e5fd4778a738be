"""``RequestHandle``: a caller's view of one request in the engine.

Iterate it (``for event in handle`` or ``async for``) for the request's events as they come;
:meth:`RequestHandle.result` / :meth:`RequestHandle.aresult` wait for its result. Stopping early
(closing the iteration, cancelling the awaiting task, or :meth:`RequestHandle.cancel`) cancels
the request: it leaves the batch at the engine's next pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ..errors import LatentRAGError
from ..results import LatentRAGResult
from .channel import Channel
from .events import Event


class RequestCancelled(LatentRAGError):
    """The request was cancelled before it ended."""


class _End:
    """The last item of a request's channel: its result or its error."""

    def __init__(self, result: LatentRAGResult | None, error: BaseException | None) -> None:
        self.result, self.error = result, error


class RequestHandle:
    """One request sent to an :class:`~latentrag_plugins.engine.Engine`."""

    def __init__(self) -> None:
        self._channel = Channel()
        self.on_cancel: Callable[[], None] | None = None  # asks the engine to drop it
        self._end: _End | None = None

    # ------------------------------------------------------------------ the engine's side
    def send(self, event: Event) -> None:
        """Pass an event to the caller (engine side)."""
        self._channel.put(event)

    def close(self, result: LatentRAGResult | None, error: BaseException | None = None) -> None:
        """End the request with its result or error (engine side)."""
        self._channel.put(_End(result, error))

    # ------------------------------------------------------------------ the caller's side
    @property
    def done(self) -> bool:
        """Whether the caller has read the request's end."""
        return self._end is not None

    def cancel(self) -> None:
        """Drop the request: it leaves the batch at the engine's next pass. Reading on gives
        :class:`RequestCancelled` (unless it had already ended)."""
        if self._end is None and self.on_cancel is not None:
            self.on_cancel()

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The request's next event, or None once it has ended.

        Raises:
            RequestCancelled: It was cancelled.
            TimeoutError: Nothing came within ``timeout`` seconds.
            The request's own error, once its events are read.
        """
        return self._read(None if self._end is not None else self._channel.get(timeout))

    async def anext_event(self) -> Event | None:
        """Async :meth:`next_event`; it may be awaited on any event loop."""
        return self._read(None if self._end is not None else await self._channel.aget())

    def _read(self, item: Any) -> Event | None:
        """An item read from the channel (None: the end was read before) as an event, or
        None at the end (raising the request's error)."""
        if item is not None and not isinstance(item, _End):
            return item
        if item is not None:
            self._end = item
        assert self._end is not None
        if self._end.error is not None:
            raise self._end.error
        return None

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """The request's events as they come; ends when the request does. Closing it early
        cancels the request. Raises as :meth:`next_event` does."""
        try:
            while (event := self.next_event(timeout)) is not None:
                yield event
        finally:
            self.cancel()  # a no-op once it has ended

    def __iter__(self) -> Iterator[Event]:
        return self.events()

    async def aevents(self) -> AsyncIterator[Event]:
        """Async :meth:`events`; cancelling the reading task or closing early cancels the
        request."""
        try:
            while (event := await self.anext_event()) is not None:
                yield event
        finally:
            self.cancel()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.aevents()

    def result(
        self, timeout: float | None = None, on_event: Callable[[Event], Any] | None = None
    ) -> LatentRAGResult:
        """Wait for the request's result, passing its events to ``on_event`` on the way.

        Raises:
            RequestCancelled: The request was cancelled.
            TimeoutError: No event or result came within ``timeout`` seconds.
            The request's own error (a failed search, a bad document).
        """
        for event in self.events(timeout):
            if on_event is not None:
                on_event(event)
        assert self._end is not None and self._end.result is not None
        return self._end.result

    async def aresult(self, on_event: Callable[[Event], Any] | None = None) -> LatentRAGResult:
        """Async :meth:`result`; ``on_event`` may be a coroutine function."""
        async for event in self.aevents():
            if on_event is not None:
                out = on_event(event)
                if asyncio.iscoroutine(out):
                    await out
        assert self._end is not None and self._end.result is not None
        return self._end.result

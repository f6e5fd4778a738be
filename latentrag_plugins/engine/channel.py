"""A one-reader queue from the engine's thread to a caller that reads in a thread or a coroutine.

An async reader may read on any event loop (LlamaIndex reads a streaming response on a new loop
in another thread); the writer never needs to know which.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from typing import Any


class Channel:
    """Items put from any thread, read in order by one reader, blocking or awaiting."""

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def put(self, item: Any) -> None:
        """Add ``item`` and wake the reader, if one waits."""
        with self._lock:
            self._items.append(item)
            self._ready.notify()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, woken = waiter
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody reads
                loop.call_soon_threadsafe(_wake, woken)

    def get(self, timeout: float | None = None) -> Any:
        """The next item, blocking until there is one.

        Raises:
            TimeoutError: Nothing came within ``timeout`` seconds.
        """
        with self._lock:
            if not self._ready.wait_for(lambda: self._items, timeout):
                raise TimeoutError("no answer within the timeout")
            return self._items.popleft()

    async def aget(self) -> Any:
        """The next item, waiting on the running event loop until there is one."""
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                loop = asyncio.get_running_loop()
                woken = loop.create_future()
                self._waiter = (loop, woken)
            await woken


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():  # a reader cancelled meanwhile leaves a cancelled future
        woken.set_result(None)

"""How a request searches its store: a sync or async function, batched across requests when the
store can search many embeddings at once.

A search function takes a :class:`SearchQuery` and returns the step's documents, best first
(``list[RetrievedDoc]``), or is a coroutine function returning them. The engine runs a sync one
in a worker thread and an async one on the caller's event loop, so a request waiting for its
store never holds up the others. Raising :class:`EndRequest` ends the request there.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StoreError
from ..results import RetrievedDoc


@dataclass(frozen=True)
class SearchQuery:
    """One latent step's search.

    Attributes:
        embedding: The latent query embedding ``(dim,)``, float32, L2-normalised.
        k: Documents wanted.
        step: 0-based step index.
        question: The request's question.
        subquery: The step's decoded subquery (requests with ``decode=True``), else None.
    """

    embedding: np.ndarray
    k: int
    step: int
    question: str
    subquery: str | None = None


class EndRequest(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a search function to end its request at once: the result holds the steps so
    far and no answer (e.g. an empty index, where nothing can be found)."""


def search_many(store: Any, embeddings: np.ndarray, k: int) -> list[list[RetrievedDoc]]:
    """Search ``store`` once per row of ``embeddings (b, dim)`` (``search_batch`` if it has it)."""
    if hasattr(store, "search_batch"):
        return store.search_batch(embeddings, k)
    if not hasattr(store, "search"):
        raise StoreError(f"{type(store).__name__} has no search(embedding, k) method")
    return [store.search(e, k) for e in embeddings]


class StoreSearch:
    """The search function of a store with ``search(embedding, k)`` (and ``search_batch``):
    requests searching the same store in the same round are searched in one batch.

    Raises:
        StoreError: The store has no ``search`` method.
    """

    def __init__(self, store: Any) -> None:
        if not hasattr(store, "search") and not hasattr(store, "search_batch"):
            raise StoreError(f"{type(store).__name__} has no search(embedding, k) method")
        self.store = store

    @property
    def group(self) -> Any:
        """Requests whose searches share this value are searched together (:meth:`batch`)."""
        return self.store

    def __call__(self, query: SearchQuery) -> list[RetrievedDoc]:
        return self.batch(query.embedding[None], query.k)[0]

    def batch(self, embeddings: np.ndarray, k: int) -> list[list[RetrievedDoc]]:
        """Search every row of ``embeddings (b, dim)``."""
        return search_many(self.store, embeddings, k)


def is_async(search: Callable[..., Any]) -> bool:
    """Whether ``search`` is a coroutine function (or an object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(search) or inspect.iscoroutinefunction(
        getattr(search, "__call__", None)  # noqa: B004 (an object's __call__, not callable())
    )


def event_loop_for(search: Callable[..., Any], loop: asyncio.AbstractEventLoop | None) -> Any:
    """The event loop an async ``search`` runs on: ``loop``, else the running one (None for a
    sync search).

    Raises:
        RuntimeError: An async search with no loop given and none running.
    """
    if not is_async(search):
        return None
    if loop is not None:
        return loop
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "an async search function needs an event loop: submit from a coroutine, or pass "
            "loop=..."
        ) from None

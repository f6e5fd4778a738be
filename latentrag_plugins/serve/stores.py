"""The store a replica searches: a FAISS index directory, or whatever a store factory returns.

:func:`store_search` turns a store into the engine's search function (``SearchQuery ->
list[RetrievedDoc]``), checked against the model's document tower:

- a store with ``search(embedding, k)`` (a :class:`~latentrag_plugins.FaissStore`): searched in
  the engine's worker threads, one batch per round when it has ``search_batch``;
- a LangChain ``VectorStore``: by vector, through the LangChain adapter's searcher (its native
  async search on the replica's event loop where it has one, else its sync one in a worker);
- a LlamaIndex ``VectorStoreIndex``: through its own vector retriever, as the LlamaIndex adapter
  searches it.

Every failure of a search is a :class:`~latentrag_plugins.errors.StoreError` naming the store and
the step, so the service answers it as the store's failure (502) and fails that request alone.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine import EndRequest, SearchQuery, StoreSearch
from ..errors import StoreError
from ..results import RetrievedDoc
from .config import ServeConfig

if TYPE_CHECKING:
    from ..model import LatentRAG


@dataclass
class ServedStore:
    """A store ready to serve: its search function and what ``/health`` says about it.

    Attributes:
        search: The engine's search function for every request.
        kind: ``faiss``, ``langchain``, ``llama_index`` or ``store`` (any other ``search``).
        name: The store's class name.
        source: Where it came from (the index directory or the factory).
        documents: How many documents it holds, where it can tell.
    """

    search: Callable[..., Any]
    kind: str
    name: str
    source: str
    documents: int | None = None

    def info(self) -> dict[str, Any]:
        """The store's part of ``/health``."""
        return {"kind": self.kind, "class": self.name, "source": self.source,
                "documents": self.documents}  # fmt: skip


def load_store(config: ServeConfig, model: LatentRAG) -> ServedStore:
    """Open the config's store (``index`` or ``store_factory``) for ``model``.

    Raises:
        StoreError: The index is missing, unreadable or built with another encoder; the factory
            returned something that is not a store.
        ImportError: The factory's module does not import.
    """
    if config.index is not None:
        from ..store.faiss_store import FaissStore

        store = FaissStore.load(config.index, encoder_id=model.encoder_id, dim=model.dim)
        return store_search(store, model, source=config.index)
    factory = resolve_factory(config.store_factory or "")
    takes_model = any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        for p in inspect.signature(factory).parameters.values()
    )
    store = factory(model) if takes_model else factory()
    return store_search(store, model, source=config.store_source())


def resolve_factory(spec: str) -> Callable[..., Any]:
    """The function named by ``module:function``.

    Raises:
        ImportError: The module does not import.
        ValueError: The module has no such function.
    """
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"store factory {spec}: cannot import {module_name} ({exc})") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"store factory {spec}: {module_name} has no function {name!r}")
    return factory


def store_search(store: Any, model: LatentRAG, source: str = "") -> ServedStore:
    """The search function of ``store``, checked against ``model``'s document tower.

    Raises:
        StoreError: It is not a store, or it is empty.
        EncoderMismatchError: Its vectors come from another encoder or have another dimension.
    """
    name = type(store).__name__
    if _is_instance(store, "langchain_core.vectorstores", "VectorStore"):
        from ..langchain._store_adapter import StoreSearcher, check_store

        check_store(store, model)
        searcher = StoreSearcher(store)
        search = _AsyncLangChain(searcher) if searcher.native_async else _LangChain(searcher)
        return ServedStore(search, "langchain", name, source)
    if _is_instance(store, "llama_index.core.indices.base", "BaseIndex"):
        return ServedStore(_LlamaIndex(model, store), "llama_index", name, source)
    if callable(getattr(store, "search", None)) or hasattr(store, "search_batch"):
        from ..runtime import check_store

        check_store(store, model.encoder_id, model.dim)
        kind = "faiss" if name == "FaissStore" else "store"
        documents = len(store) if hasattr(store, "__len__") else None
        return ServedStore(_Checked(store), kind, name, source, documents)
    raise StoreError(
        f"the store factory returned {name}, which is not a store: return a FaissStore (or "
        "anything with search(embedding, k)), a LangChain VectorStore or a LlamaIndex "
        "VectorStoreIndex"
    )


def _is_instance(obj: Any, module: str, cls: str) -> bool:
    """``isinstance(obj, module.cls)`` without importing a framework the store doesn't use."""
    mod = sys.modules.get(module)
    return mod is not None and isinstance(obj, getattr(mod, cls))


def _failed(store: str, step: int | None, exc: BaseException) -> StoreError:
    where = "" if step is None else f" at latent step {step}"
    return StoreError(f"{store} search failed{where}: {type(exc).__name__}: {exc}")


class _Checked(StoreSearch):
    """:class:`StoreSearch` whose failures are :class:`StoreError` naming the store."""

    def batch(self, embeddings: np.ndarray, k: int) -> list[list[RetrievedDoc]]:
        try:
            return super().batch(embeddings, k)
        except StoreError:
            raise
        except Exception as exc:
            raise _failed(type(self.store).__name__, None, exc) from exc


class _LangChain:
    """Searches a LangChain store with its sync API (in the engine's worker threads)."""

    def __init__(self, searcher: Any) -> None:
        self.searcher = searcher

    def __call__(self, query: SearchQuery) -> list[RetrievedDoc]:
        from ..langchain._run import as_retrieved

        return as_retrieved(self.searcher.search(query.embedding.tolist(), query.k, query.step))


class _AsyncLangChain(_LangChain):
    """Searches a LangChain store with its native async API (on the replica's event loop)."""

    async def __call__(self, query: SearchQuery) -> list[RetrievedDoc]:  # type: ignore[override]
        from ..langchain._run import as_retrieved

        hits = await self.searcher.asearch(query.embedding.tolist(), query.k, query.step)
        return as_retrieved(hits)


class _LlamaIndex:
    """Searches a ``VectorStoreIndex`` through its own retriever (one per ``top_k``), async;
    an index that finds nothing at the first step ends the request there (it is empty)."""

    def __init__(self, model: LatentRAG, index: Any) -> None:
        from ..llama_index._run import IndexSearch

        self.model, self.index = model, index
        self._searchers = {model.config.top_k: IndexSearch(model, index)}  # checks the index

    def _searcher(self, k: int) -> Any:
        if k not in self._searchers:
            from ..llama_index._run import IndexSearch

            self._searchers[k] = IndexSearch(self.model, self.index, top_k=k)
        return self._searchers[k]

    async def __call__(self, query: SearchQuery) -> list[RetrievedDoc]:
        from llama_index.core.schema import QueryBundle

        from ..llama_index._run import to_doc

        bundle = QueryBundle(query.subquery or query.question, embedding=query.embedding.tolist())
        found = await self._searcher(query.k).asearch(bundle, query.step)
        if query.step == 0 and not found:
            raise EndRequest
        return [to_doc(n) for n in found]

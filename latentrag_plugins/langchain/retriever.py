"""``LatentRAGRetriever``: LatentRAG's latent multi-step search over any LangChain vector store.

A drop-in ``BaseRetriever``: where a chain or agent used ``vectorstore.as_retriever()``, use
``LatentRAGRetriever(model=model, vectorstore=vectorstore)``. The store must hold vectors from
the model's document tower (build it with :class:`LatentRAGEmbeddings`). With a LatentRAG
service (``latentrag serve``), ``LatentRAGRetriever(model="http://host:8000")``: it searches its
own store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever, LangSmithRetrieverParams
from langchain_core.runnables import RunnableConfig
from langchain_core.vectorstores import VectorStore
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ..live import check_question, resolve_model, submit
from ..model import LatentRAG
from ._run import Run, check_target
from ._store_adapter import StoreSearcher, check_store, store_embeddings

if TYPE_CHECKING:
    from ..serve.client import RemoteLatentRAG

_OVERRIDES = ("k", "top_k", "max_steps", "decode")


class LatentRAGRetriever(BaseRetriever):
    """Retrieve with LatentRAG: the model reasons in latent space and searches the store by
    vector, once per latent step, for at least one and at most ``max_steps`` steps.

    Returns the de-duplicated union of the documents of every step, in step then rank order, cut
    to ``k``. If the model stops early, fewer than ``k`` documents can come back (at most
    ``top_k`` per step taken); a search that finds nothing (an empty store, a filter that excludes
    everything) gives a step without documents, so an empty store returns ``[]``.

    Each document is a copy of the store's (same id, same metadata) whose metadata gains
    ``latentrag_step`` and ``latentrag_rank`` (0-based), ``latentrag_score`` (the store's raw
    score: a similarity or a distance, depending on the store; None if the store gives none)
    and, with ``decode=True``, ``latentrag_subquery`` (the decoded latent subquery).

    Every latent step dispatches the custom callback event ``latentrag_step``; with
    ``decode=True`` every step's thought and subquery are decoded as the loop goes and dispatched
    as ``latentrag_thought`` just before its ``latentrag_step`` (see
    :mod:`latentrag_plugins.langchain.events`).

    Calls from any number of threads or tasks run on the model's engine (``model.engine``):
    concurrent calls share forward passes; a call waiting for the store holds up no other.

    ``invoke(question, k=..., top_k=..., max_steps=..., decode=...)`` overrides those fields for
    one call; other keyword arguments go to the store's search, as ``search_kwargs`` do.

    Raises:
        EncoderMismatchError: The store's embeddings or vectors are not the model's document
            tower (at construction, or at the first call for a store that was empty).
        StoreError: The store can't search by vector (at construction), or a search failed (the
            store's exception is the ``__cause__``; nothing is returned).
        ValueError: Empty question.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any = Field(
        repr=False, description="LatentRAG model, checkpoint path, or LatentRAG service URL."
    )
    vectorstore: VectorStore | None = Field(
        default=None, description="Store built with LatentRAGEmbeddings (not with a service)."
    )
    k: int = Field(default=4, ge=1, description="Documents returned.")
    top_k: int | None = Field(
        default=None, ge=1, description="Documents retrieved per latent step (None: the model's)."
    )
    max_steps: int | None = Field(
        default=None, ge=1, description="Most latent retrieval steps (None: the model's, >= 1)."
    )
    decode: bool = Field(default=False, description="Decode thoughts and subqueries to text.")
    search_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the store's search by vector."
    )
    _dim_checked: bool = PrivateAttr(default=False)

    @field_validator("model", mode="before")
    @classmethod
    def _load_model(cls, value: Any) -> LatentRAG | RemoteLatentRAG:
        return resolve_model(value)

    @model_validator(mode="after")
    def _check_store(self) -> LatentRAGRetriever:
        cfg = self.model.config
        self.top_k = cfg.top_k if self.top_k is None else self.top_k
        self.max_steps = max(1, cfg.max_steps) if self.max_steps is None else self.max_steps
        self._dim_checked = check_target(self.model, self.vectorstore, self.search_kwargs)
        if self.tags is None:
            self.tags = self._store_tags()
        return self

    def _store_tags(self) -> list[str]:
        if self.vectorstore is None:
            return ["LatentRAGService"]
        emb = store_embeddings(self.vectorstore)
        return [type(self.vectorstore).__name__] + ([type(emb).__name__] if emb else [])

    def _get_ls_params(self, **kwargs: Any) -> LangSmithRetrieverParams:
        """Trace parameters, naming the vector store and embedding class like
        ``VectorStoreRetriever``."""
        params = super()._get_ls_params(**kwargs)
        params["ls_vector_store_provider"] = self._store_tags()[0]
        if (emb := store_embeddings(self.vectorstore)) is not None:
            params["ls_embedding_provider"] = type(emb).__name__
        return params

    def _start(
        self, query: str, kwargs: dict[str, Any], config: RunnableConfig
    ) -> tuple[int, dict[str, Any], Run]:
        check_question(query, type(self).__name__)
        if not self._dim_checked:
            self._dim_checked = check_store(self.vectorstore, self.model)
        opts = {name: kwargs.pop(name, getattr(self, name)) for name in _OVERRIDES}
        k, top_k, max_steps = int(opts["k"]), int(opts["top_k"]), int(opts["max_steps"])
        if min(k, top_k, max_steps) < 1:
            raise ValueError("k, top_k and max_steps must be >= 1")
        decode = bool(opts["decode"])
        options = dict(
            top_k=top_k, max_steps=max_steps, min_steps=1, decode=decode,
            generate_answer=False, final_thought=decode,
        )  # fmt: skip
        searcher = None
        if self.vectorstore is not None:
            searcher = StoreSearcher(self.vectorstore, {**self.search_kwargs, **kwargs})
        return k, options, Run(searcher, config)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, options, run = self._start(query, kwargs, {"callbacks": run_manager.get_child()})
        (handle,) = submit(self.model, [query], [run.search], **options)
        result = handle.result(on_event=run.dispatch)
        return run.documents(result, decode=options["decode"])[:k]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, options, run = self._start(query, kwargs, {"callbacks": run_manager.get_child()})
        (handle,) = submit(self.model, [query], [run.asearch], **options)
        result = await handle.aresult(on_event=run.adispatch)
        return run.documents(result, decode=options["decode"])[:k]

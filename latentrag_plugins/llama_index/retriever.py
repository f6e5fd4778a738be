"""``LatentRAGRetriever``: LatentRAG's latent steps as a LlamaIndex retriever over a
``VectorStoreIndex``.

Each latent step searches the index's own vector retriever with
``QueryBundle(query_str=<decoded subquery or question>, embedding=<latent query embedding>)``, so
any vector store works, including stores that keep no text (FAISS: nodes come from the docstore).
With a LatentRAG service (``latentrag serve``), ``LatentRAGRetriever("http://host:8000")``: it
searches its own store.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.instrumentation import Dispatcher, get_dispatcher
from llama_index.core.schema import NodeWithScore, QueryBundle

from ..engine import RequestHandle
from ..live import check_question, is_remote, resolve_model, submit
from ._run import IndexSearch, Run

if TYPE_CHECKING:
    from ..model import LatentRAG
    from ..serve.client import RemoteLatentRAG

dispatcher = get_dispatcher(__name__)


class LatentRAGRetriever(BaseRetriever):
    """Retrieve with LatentRAG's latent subqueries: at least one step, up to ``max_steps``.

    Returns the de-duplicated union of every step's nodes, in step then rank order, cut to
    ``similarity_top_k``. Node ids, scores (the store's) and metadata are kept; each node's
    metadata gains ``latentrag_step`` and ``latentrag_rank`` (and ``latentrag_subquery`` when
    decoding), excluded from LLM and embedding text. An empty index returns ``[]`` after one step.

    Emits :class:`~latentrag_plugins.llama_index.events.LatentStepEvent` per step (and
    :class:`~latentrag_plugins.llama_index.events.LatentThoughtEvent` with ``decode=True``) from
    the ``latentrag_plugins.llama_index.retriever`` dispatcher, inside the ``_retrieve`` span.

    Calls from any number of threads or tasks run on the model's engine (``model.engine``):
    concurrent calls share forward passes; a call waiting for its store holds up no other. The
    async path searches with the store's async API, or its sync one in a worker thread when the
    store has none that works (a Qdrant store made with only a sync client, say).

    Args:
        model: A :class:`~latentrag_plugins.LatentRAG` or a checkpoint directory.
        index: A ``VectorStoreIndex`` built with the model's document tower
            (:class:`~latentrag_plugins.llama_index.LatentRAGEmbedding`); checked on construction.
        similarity_top_k: Most nodes returned (default: all de-duplicated nodes).
        top_k: Nodes per latent step (default: the model's ``config.top_k``, 3).
        max_steps: Most latent retrieval steps (default: ``config.max_steps``, 4).
        decode: Decode each step's thought and subquery; the subquery is the step's
            ``query_str`` (for hybrid / text-aware stores) and is added to node metadata.
        callback_manager: LlamaIndex callback manager.
        retriever_kwargs: Extra ``index.as_retriever`` arguments, e.g. ``filters``.
        verbose: LlamaIndex verbose flag.

    Raises:
        EncoderMismatchError: The index's embed model or dimension is not the model's tower.
    """

    def __init__(
        self,
        model: LatentRAG | str | os.PathLike[str] | Any,
        index: Any = None,
        *,
        similarity_top_k: int | None = None,
        top_k: int | None = None,
        max_steps: int | None = None,
        decode: bool = False,
        callback_manager: CallbackManager | None = None,
        retriever_kwargs: dict[str, Any] | None = None,
        verbose: bool = False,
    ) -> None:
        if similarity_top_k is not None and similarity_top_k < 1:
            raise ValueError("similarity_top_k must be >= 1")
        self.searcher: IndexSearch | None = None
        self._model = resolve_model(model)
        if is_remote(self._model):
            if index is not None or retriever_kwargs:
                raise ValueError(
                    "a LatentRAG service searches its own store: leave index (and "
                    "retriever_kwargs) out, or pass a model instead of the service's URL"
                )
            cfg = self._model.config
            self.top_k = cfg.top_k if top_k is None else int(top_k)
            self.max_steps = max(1, cfg.max_steps) if max_steps is None else int(max_steps)
        else:
            if index is None:
                raise ValueError("pass index=... (a VectorStoreIndex built with the model's "
                                 "document tower), or a LatentRAG service's URL as model")  # fmt: skip
            self.searcher = IndexSearch(
                self._model, index, top_k=top_k, max_steps=max_steps,
                retriever_kwargs=retriever_kwargs,
            )  # fmt: skip
            self.top_k, self.max_steps = self.searcher.top_k, self.searcher.max_steps
        self.decode = decode
        self.similarity_top_k = similarity_top_k
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @property
    def model(self) -> LatentRAG | RemoteLatentRAG:
        """The LatentRAG model (or service)."""
        return self._model

    def start(
        self, question: str, caller: Any, events: Dispatcher, *, answer: bool, asynchronous: bool
    ) -> tuple[Run, RequestHandle]:
        """Send ``question`` to the model's engine; returns its :class:`Run` and handle (the
        question is checked now; errors name ``caller``'s class). Events go to ``events``."""
        check_question(question, type(caller).__name__)
        run = Run(self.searcher, question, events)
        (handle,) = submit(
            self._model,
            [question],
            [run.asearch if asynchronous else run.search],
            top_k=self.top_k,
            max_steps=self.max_steps,
            min_steps=1,
            decode=self.decode,
            final_thought=self.decode,
            generate_answer=answer,
        )
        return run, handle

    def _cut(self, run: Run) -> list[NodeWithScore]:
        nodes = run.nodes
        return nodes if self.similarity_top_k is None else nodes[: self.similarity_top_k]

    @dispatcher.span
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Run the latent steps (no answer) and return their nodes."""
        run, handle = self.start(
            query_bundle.query_str, self, dispatcher, answer=False, asynchronous=False
        )
        handle.result(on_event=run.emit)
        return self._cut(run)

    @dispatcher.span
    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Async :meth:`_retrieve`: the index retriever's ``aretrieve``."""
        run, handle = self.start(
            query_bundle.query_str, self, dispatcher, answer=False, asynchronous=True
        )
        await handle.aresult(on_event=run.emit)
        return self._cut(run)

"""``LatentRAGRetriever``: LatentRAG's latent steps as a LlamaIndex retriever over a
``VectorStoreIndex``.

Each latent step searches the index's own vector retriever with
``QueryBundle(query_str=<decoded subquery or question>, embedding=<latent query embedding>)``, so
any vector store works, including stores that keep no text (FAISS: nodes come from the docstore).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.schema import NodeWithScore, QueryBundle

from ._driver import LatentDriver, RunState

if TYPE_CHECKING:
    from ..model import LatentRAG

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
        model: LatentRAG | str | os.PathLike[str],
        index: Any,
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
        self._driver = LatentDriver(
            model,
            index,
            top_k=top_k,
            max_steps=max_steps,
            decode=decode,
            retriever_kwargs=retriever_kwargs,
        )
        self.similarity_top_k = similarity_top_k
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @property
    def model(self) -> LatentRAG:
        """The LatentRAG model."""
        return self._driver.model

    def _cut(self, state: RunState) -> list[NodeWithScore]:
        nodes = state.nodes
        return nodes if self.similarity_top_k is None else nodes[: self.similarity_top_k]

    @dispatcher.span
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Run the latent steps (no answer) and return their nodes."""
        plan = self._driver.plan(
            query_bundle.query_str, dispatcher, generate_answer=False, caller=type(self).__name__
        )
        _, state = self._driver.run_plan(plan)
        return self._cut(state)

    @dispatcher.span
    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Async :meth:`_retrieve`: the index retriever's ``aretrieve``, model work in a thread."""
        plan = self._driver.plan(
            query_bundle.query_str, dispatcher, generate_answer=False, caller=type(self).__name__
        )
        _, state = await self._driver.arun_plan(plan)
        return self._cut(state)

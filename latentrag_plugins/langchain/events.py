"""The custom callback events LatentRAG dispatches, and the data they carry.

Every latent step dispatches :data:`STEP_EVENT`; with ``decode=True`` every step's thought and
subquery are decoded as the loop goes and dispatched as :data:`THOUGHT_EVENT` just before the
step's :data:`STEP_EVENT`; :class:`~latentrag_plugins.langchain.LatentRAGChain` dispatches
:data:`TOKEN_EVENT` for each answer token. They reach ``BaseCallbackHandler.on_custom_event`` and
``astream_events(version="v2")`` (as ``{"event": "on_custom_event", "name": ..., "data": ...}``).

The callback config is always passed explicitly (``dispatch_custom_event(..., config=...)``), so
the events arrive on Python 3.10 too, where asyncio does not carry the config in a context var.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import adispatch_custom_event, dispatch_custom_event
from langchain_core.documents import Document
from langchain_core.runnables import RunnableConfig

from ..results import Step

STEP_EVENT = "latentrag_step"
"""Name of the per-step event. Data: ``{"step", "action", "forced", "document_ids", "scores"}``."""
THOUGHT_EVENT = "latentrag_thought"
"""Name of the decoded-thought event (``decode=True``). Data: ``{"step", "action", "thought",
"subquery"}``."""
TOKEN_EVENT = "latentrag_token"
"""Name of the answer-token event of the chain. Data: ``{"text"}``."""

Hit = tuple[Document, float | None]
"""One search hit: the store's document and its raw score (None if the store gives none)."""


def document_id(doc: Document) -> str | None:
    """The store id of a document: ``Document.id``, else a ``_id``/``id`` metadata entry.

    Qdrant, for one, leaves ``Document.id`` empty and puts the point id in ``metadata["_id"]``.
    """
    if doc.id is not None:
        return str(doc.id)
    for key in ("_id", "id"):
        if doc.metadata.get(key) is not None:
            return str(doc.metadata[key])
    return None


def step_data(index: int, action: str, forced: bool, hits: list[Hit]) -> dict[str, Any]:
    """Data of a :data:`STEP_EVENT`: the step, its action and the ids and raw scores it found.

    Args:
        index: 0-based step index.
        action: ``"retrieve"`` or ``"answer"``.
        forced: True when the answer was forced (``max_steps`` or the context budget).
        hits: The documents the step's search returned, best first.
    """
    return {
        "step": index,
        "action": action,
        "forced": forced,
        "document_ids": [document_id(d) for d, _ in hits],
        "scores": [s for _, s in hits],
    }


def thought_data(step: Step) -> dict[str, Any]:
    """Data of a :data:`THOUGHT_EVENT`: the step's decoded thought and subquery."""
    return {
        "step": step.index,
        "action": step.action,
        "thought": step.thought,
        "subquery": step.subquery,
    }


def dispatch(name: str, data: dict[str, Any], config: RunnableConfig) -> None:
    """Dispatch one event to the run that ``config`` belongs to (sync callbacks)."""
    dispatch_custom_event(name, data, config=config)


async def adispatch(name: str, data: dict[str, Any], config: RunnableConfig) -> None:
    """Dispatch one event to the run that ``config`` belongs to (async callbacks)."""
    await adispatch_custom_event(name, data, config=config)

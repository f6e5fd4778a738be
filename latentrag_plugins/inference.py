"""The LatentRAG inference loop (public names; it lives in :mod:`latentrag_plugins.engine`).

One LLM forward pass per latent step, the KV cache reused across steps; see
:mod:`latentrag_plugins.engine.passes` for the passes and
:func:`~latentrag_plugins.engine.latent_loop` to drive the loop by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .engine.loop import (
    SearchRequest,
    drive,
    latent_loop,
    question_prompt,
    result_docs,
    search_store,
)
from .extractive import SpanConstraint, quote_constraint
from .tokens import special_ids

if TYPE_CHECKING:
    from .model import LatentRAG


def answer_spans(
    model: LatentRAG, contexts: list[list[int]], stop: set[int]
) -> SpanConstraint | None:
    """The extractive-answer constraint over each row's context (None unless configured)."""
    if not model.config.extractive_answers:
        return None
    return quote_constraint(contexts, model.ids.all | special_ids(model.tokenizer), stop)


__all__ = [
    "SearchRequest",
    "answer_spans",
    "drive",
    "latent_loop",
    "question_prompt",
    "result_docs",
    "search_store",
]

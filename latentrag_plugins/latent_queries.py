"""Query embeddings for any vector store: the frozen document tower, or one latent step.

A *latent query embedding* is the embedding LatentRAG searches with at its first step: one LLM
pass over the question's prompt and the slots ``<think_1..m><query_1..n>``, the query slots' last
hidden states through ``Proj_ret`` and the query tower, L2-normalised, in the document tower's
space. A retriever that "thinks" in a few latent tokens before it embeds a query is the LaSER
setting; here it needs no agent, so any store built with the document tower can be searched
with it (documents keep their vectors: only queries change).

The pass is the loop's own step-0 pass (:mod:`latentrag_plugins.engine.passes`): the same prompt
builder, slots, :class:`~latentrag_plugins.context.BatchedContext` and
:meth:`~latentrag_plugins.LatentRAG.latent_query_embedding`, in eval mode and without autograd.
It runs in the caller's thread, outside the engine; calls on one model take turns
(:func:`~latentrag_plugins.live.model_lock`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .context import BatchedContext
from .engine.loop import question_prompt
from .live import model_lock
from .runtime import check_questions, check_text, eval_mode

if TYPE_CHECKING:
    from .model import LatentRAG

DEFAULT_BATCH = 32  # questions per LLM pass


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    """``texts`` as a list of strings.

    Raises:
        TypeError: ``texts`` is a single string, or not a sequence of strings.
        ValueError: A text is not valid UTF-8 text.
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"{what} must be a list of strings, not {type(texts).__name__}")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"{what} must be strings, got a {type(t).__name__}")
        check_text(t, "query")
    return list(texts)


def embed_queries(
    model: LatentRAG,
    texts: Sequence[str],
    *,
    latent: bool = False,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """Embed queries -> ``(len(texts), dim)`` float32, L2-normalised, in the document tower's space.

    Args:
        model: The model.
        texts: The queries.
        latent: One latent step (:func:`latent_query_embeddings`); False: the frozen document
            tower on the text (with the encoder's query instruction, if it has one).
        batch_size: Queries per forward pass.

    Raises:
        TypeError: ``texts`` is not a list of strings.
        ValueError: With ``latent``, an empty or blank query, or one too long for the model's
            context.
    """
    texts = check_texts(texts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    if not texts:
        return np.zeros((0, model.dim), dtype=np.float32)
    if not latent:
        return model.doc_tower.embed_texts(texts, is_query=True, batch_size=batch_size)
    return latent_query_embeddings(model, texts, batch_size=batch_size)


def latent_query_embeddings(
    model: LatentRAG, questions: Sequence[str], *, batch_size: int = DEFAULT_BATCH
) -> np.ndarray:
    """The step-0 latent query embedding of each question -> ``(len(questions), dim)`` float32.

    Questions are fed ``batch_size`` at a time, longest prompt first (so a batch pads little);
    rows come back in the input order.

    Raises:
        ValueError: An empty or blank question, or one too long for ``max_context_tokens``.
    """
    questions = list(questions)
    check_questions(questions)
    prompts = [question_prompt(model, q) for q in questions]
    slots = model.prompts.think_slots() + model.prompts.query_slots()
    n = model.config.n_query
    out = np.zeros((len(questions), model.dim), dtype=np.float32)
    order = np.argsort([-len(p) for p in prompts], kind="stable")
    with model_lock(model), eval_mode(model), torch.inference_mode():
        for i in range(0, len(questions), batch_size):
            rows = order[i : i + batch_size]
            ctx = BatchedContext(model.llm, len(rows), model.ids.pad, model.wide_llm)
            h_query = ctx.feed([prompts[j] + slots for j in rows], keep=n)  # (b, n, d_llm)
            out[rows] = model.latent_query_embedding(h_query).float().cpu().numpy()  # (b, dim)
    return out

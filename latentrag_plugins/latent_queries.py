"""Query embeddings for any vector store: the frozen document tower, or one latent step.

A *latent query embedding* is the embedding LatentRAG searches with at its first step: one LLM
pass over the question's prompt and the slots ``<think_1..m><query_1..n>``, the query slots' last
hidden states through ``Proj_ret`` and the query tower, L2-normalised, in the document tower's
space. A retriever that "thinks" in a few latent tokens before it embeds a query is the LaSER
setting; here it needs no agent, so any store built with the document tower can be searched
with it (documents keep their vectors: only queries change).

Each query is a request to the model's engine that ends at its first search, so the pass is
the loop's own step-0 pass, batched with whatever else the model is serving.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .engine.search import EndRequest, SearchQuery
from .results import RetrievedDoc
from .runtime import check_text

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

    Questions go to the model's engine ``batch_size`` at a time; each request ends at its first
    search, whose query embedding it keeps.

    Raises:
        ValueError: An empty or blank question, or one too long for ``max_context_tokens``.
    """
    questions = list(questions)
    out = np.zeros((len(questions), model.dim), dtype=np.float32)
    for start in range(0, len(questions), batch_size):
        rows = range(start, min(start + batch_size, len(questions)))
        handles = model.engine.submit_many(
            [questions[i] for i in rows], [_keep(out, i) for i in rows],
            min_steps=1, max_steps=1, generate_answer=False,
        )  # fmt: skip
        for handle in handles:
            handle.result()
    return out


def _keep(out: np.ndarray, row: int) -> Callable[[SearchQuery], list[RetrievedDoc]]:
    """A search function that keeps its query embedding in ``out[row]`` and ends the request."""

    def search(query: SearchQuery) -> list[RetrievedDoc]:
        out[row] = query.embedding
        raise EndRequest

    return search

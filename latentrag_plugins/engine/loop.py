"""``latent_loop``: the latent loop for a batch of questions, as a generator of searches.

It runs the engine's scheduler in the caller's thread and yields a :class:`SearchRequest` each
time questions need documents, so any store (sync, async, batched) can drive it by hand::

    gen = latent_loop(model, ["question"], top_k=3)
    req = next(gen)
    try:
        while True:
            req = gen.send([store.search(e, req.k) for e in req.embeddings])
    except StopIteration as stop:
        results = stop.value
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import StoreError
from ..results import LatentRAGResult, RetrievedDoc
from ..runtime import check_questions, check_store, evaluating
from .answer_text import AnswerText
from .prompt import question_prompt
from .request import LatentRequest, RequestOptions, SearchJob
from .scheduler import LatentScheduler
from .search import search_many

if TYPE_CHECKING:
    from ..model import LatentRAG


@dataclass
class SearchRequest:
    """A batch of latent query embeddings to search, one per question that retrieves now.

    Attributes:
        step: 0-based step index.
        rows: Indices of the questions (into the batch) the embeddings belong to.
        embeddings: ``(len(rows), dim)`` float32, L2-normalised.
        k: Documents wanted per embedding.
        latents: The latent subquery tokens behind the embeddings, ``(len(rows), n, d_llm)``.
        thoughts: The latent thought tokens of the same step, ``(len(rows), m, d_llm)``.
    """

    step: int
    rows: list[int]
    embeddings: np.ndarray
    k: int
    latents: torch.Tensor | None = None
    thoughts: torch.Tensor | None = None


def _ignore(_event: Any) -> None:
    """Events of a hand-driven loop go nowhere (answer pieces go to ``on_token``)."""


@evaluating()
def latent_loop(
    model: LatentRAG,
    questions: Sequence[str],
    *,
    max_steps: int | None = None,
    top_k: int | None = None,
    decode: bool = False,
    logit_lens: bool = False,
    store: Any = None,
    min_steps: int = 0,
    generate_answer: bool = True,
    on_token: Callable[[int, str], None] | None = None,
    final_thought: bool | None = None,
) -> Generator[SearchRequest, list[list[RetrievedDoc]], list[LatentRAGResult]]:
    """Run LatentRAG on a batch of questions; yields search requests, returns the results.

    Args:
        model: The model.
        questions: Non-empty questions.
        max_steps: Most retrieval steps per question.
        top_k: Documents per retrieval.
        decode: Decode latent thoughts and subqueries to text, step by step.
        logit_lens: Attach LogitLens top-5 tokens to every step.
        store: If given, checked for encoder compatibility before any work.
        min_steps: Retrieve at least this many times (capped by ``max_steps``), whatever the
            action; retrievers built on the loop use 1.
        generate_answer: Generate the final answer (False: stop after the last step; the
            result's answer is empty).
        on_token: Called as ``on_token(row, text)`` for each piece of answer text, for
            streaming.
        final_thought: Without an answer, still run the pass after the last allowed retrieval
            to get its thought latent (default: with ``decode`` or ``logit_lens``).
    """
    opts = RequestOptions.resolve(
        model.config, max_steps=max_steps, top_k=top_k, min_steps=min_steps, decode=decode,
        logit_lens=logit_lens, generate_answer=generate_answer, final_thought=final_thought,
    )  # fmt: skip
    questions = list(questions)
    if not questions:
        return []
    check_questions(questions)
    if store is not None:
        check_store(store, model.encoder_id, model.dim)
    scheduler = LatentScheduler(model)
    requests = []
    for row, q in enumerate(questions):
        text = AnswerText(model.tokenizer, partial(on_token, row) if on_token else None)
        requests.append(LatentRequest(question_prompt(model, q), q, opts, text, _ignore))
        scheduler.add(requests[-1])
    rows = {id(r): i for i, r in enumerate(requests)}
    while scheduler.requests:
        jobs, _ = scheduler.round()
        for step in sorted({j.step for j in jobs}):
            group = sorted((j for j in jobs if j.step == step), key=lambda j: rows[id(j.request)])
            t0 = time.perf_counter()
            found = yield _search_request(group, [rows[id(j.request)] for j in group])
            ms = (time.perf_counter() - t0) * 1e3
            if found is None or len(found) != len(group):
                raise StoreError("the search driver returned no documents for some questions")
            for job, docs in zip(group, found):
                job.request.stages["retrieval"] += ms
                scheduler.deliver(job.request, list(docs))
    return [r.result for r in requests]


def _search_request(jobs: list[SearchJob], rows: list[int]) -> SearchRequest:
    return SearchRequest(
        step=jobs[0].step,
        rows=rows,
        embeddings=np.stack([j.embedding for j in jobs]),  # (b, dim)
        k=jobs[0].k,
        latents=torch.stack([j.latents for j in jobs]),  # (b, n, d)
        thoughts=torch.stack([j.thoughts for j in jobs]),  # (b, m, d)
    )


def drive(
    gen: Generator[SearchRequest, list[list[RetrievedDoc]], list[LatentRAGResult]], store: Any
) -> list[LatentRAGResult]:
    """Run a loop generator against a sync store (``search_batch`` if present, else ``search``)."""
    try:
        req = next(gen)
        while True:
            req = gen.send(search_store(store, req))
    except StopIteration as stop:
        return stop.value


def search_store(store: Any, req: SearchRequest) -> list[list[RetrievedDoc]]:
    """Search ``store`` for every embedding of a request."""
    return search_many(store, req.embeddings, req.k)


def result_docs(results: Sequence[LatentRAGResult]) -> list[list[RetrievedDoc]]:
    """All retrieved documents of each result, in step then rank order."""
    return [[d for s in r.steps for d in s.docs] for r in results]

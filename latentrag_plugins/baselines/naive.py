"""``NaiveRAG``: one retrieval with the question, then the answer (the single-step baseline).

It reuses a LatentRAG model's LLM, tokenizer, prompts and document tower, so one checkpoint
serves both methods and the comparison isolates the agentic loop. The prompt follows LatentRAG's
format without the latent steps::

    Answer the following question ...: {question} <information> Doc 1 (Title: t) text ...
    </information> <answer> ... </answer>
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..context import BatchedContext, greedy_generate
from ..engine.answer_text import cased
from ..engine.search import search_many
from ..errors import StoreError
from ..extractive import quote_constraint
from ..results import LatentRAGResult, Step
from ..runtime import StageClock, check_questions, check_store, eval_mode
from ..tokens import special_ids

if TYPE_CHECKING:
    from ..model import LatentRAG


class NaiveRAG:
    """Single-step RAG over a LatentRAG model's LLM and document tower.

    Args:
        model: The LatentRAG model whose LLM, prompts and document tower are used.
        top_k: Documents retrieved (default ``model.config.top_k``).
    """

    def __init__(self, model: LatentRAG, top_k: int | None = None) -> None:
        self.model = model
        self.top_k = model.config.top_k if top_k is None else int(top_k)
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")

    @property
    def encoder_id(self) -> str:
        """Id of the document tower's encoder (what stores record)."""
        return self.model.encoder_id

    @property
    def dim(self) -> int:
        """Dimension of retrieval embeddings."""
        return self.model.dim

    def run(self, question: str, store: Any, *, top_k: int | None = None) -> LatentRAGResult:
        """Answer one question over ``store``: retrieve with the question, then answer.

        Returns:
            A result with a ``retrieve`` step (the question as subquery) and an ``answer`` step;
            timings under ``retrieval`` (question embedding + search), ``prefill`` (prompt and
            documents) and ``answer``.
        """
        return self.run_batch([question], store, top_k=top_k)[0]

    def run_batch(
        self, questions: Sequence[str], store: Any, *, top_k: int | None = None
    ) -> list[LatentRAGResult]:
        """Answer several questions with shared forward passes (timings are the batch's)."""
        m = self.model
        cfg = m.config
        k = self.top_k if top_k is None else int(top_k)
        questions = list(questions)
        if not questions:
            return []
        check_questions(questions)
        check_store(store, m.encoder_id, m.dim)
        clock = StageClock(m.device)
        with clock.stage("retrieval"):
            emb = m.doc_tower.embed_texts([q.strip() for q in questions], is_query=True)  # (B, dim)
            found = search_many(store, emb, k)
        if found is None or len(found) != len(questions):
            raise StoreError("the store returned no documents for some questions")

        reserve = cfg.max_answer_tokens + 2
        chunks = []
        for q, docs in zip(questions, found):
            prompt = m.prompts.question(q)
            budget = cfg.max_context_tokens - len(prompt) - reserve
            if budget < 0:
                raise ValueError(
                    f"question is too long for max_context_tokens={cfg.max_context_tokens}: "
                    f"{q[:60]!r}..."
                )
            chunks.append(
                prompt + m.prompts.information(docs, budget, cfg.max_doc_tokens) + [m.ids.answer]
            )
        ids = m.ids
        with eval_mode(m), torch.inference_mode():
            with clock.stage("prefill"):
                ctx = BatchedContext(m.llm, len(chunks), ids.pad, m.wide_llm)
                first = ctx.logits(ctx.feed(chunks, keep=1)[:, -1])  # (B, V)
            with clock.stage("answer"):
                stop = {ids.answer_end} | ({ids.eos} if ids.eos is not None else set())
                gens = greedy_generate(
                    ctx, first, max_new=cfg.max_answer_tokens, stop=stop,
                    banned=sorted(ids.all - {ids.answer_end}),
                    spans=_quoting(m, chunks, stop),
                )  # fmt: skip
        timings = clock.timings()
        results = []
        for q, docs, chunk, g in zip(questions, found, chunks, gens):
            answer = m.tokenizer.decode(g.tokens, skip_special_tokens=True).strip()
            res = LatentRAGResult(
                answer=cased(answer, [d.text for d in docs] + [q]),
                steps=[
                    Step(index=0, action="retrieve", docs=list(docs), subquery=q.strip()),
                    Step(index=1, action="answer"),
                ],
                timings_ms=timings,
                forward_passes=1 + g.feeds,
                input_tokens=len(chunk),
                output_tokens=len(g.tokens) + int(g.stopped),
            )
            res._token_ids = chunk + g.tokens
            results.append(res)
        return results


def _quoting(m: LatentRAG, contexts: list[list[int]], stop: set[int]) -> Any:
    """The extractive-answer constraint (None unless the model's config asks for it)."""
    if not m.config.extractive_answers:
        return None
    return quote_constraint(contexts, m.ids.all | special_ids(m.tokenizer), stop)


__all__ = ["NaiveRAG"]

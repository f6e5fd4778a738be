"""Retrieval-only evaluation (``latentrag eval --retrieval-only``): how well, and how fast, each
way of turning a question into searches finds its supporting passages.

Methods, over the same store:

- ``frozen``: the frozen document tower on the question text (plain dense retrieval), top k.
- ``latent_query``: the first latent step's query embedding (``embed_queries(latent=True)``:
  one LLM pass, ``Proj_ret``, the query tower), top k.
- ``latent``: the full LatentRAG loop without the answer, retrieving at least once as the
  LangChain and LlamaIndex retrievers do: every document it retrieved, in step then rank order.

They run in the caller's thread, interleaved batch by batch after an untimed warm-up, as
:func:`~latentrag_plugins.evaluation.evaluate` runs the answering methods. Per method:
``recall_at_k`` (the share of a question's supporting passages among its documents), ``mrr``
(the reciprocal rank of its first supporting passage), the documents per question, and the
latency per question with its split into ``embed`` (LLM and tower passes), ``search`` and
``other``; overall and per hop count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..engine import drive, latent_loop, search_many
from ..metrics import recall_at_k, reciprocal_rank
from ..results import LatentRAGResult, RetrievedDoc, Step, Timings
from ..runtime import check_store
from .questions import Question
from .runner import Record, Runner, evaluate
from .stats import OTHER, mean, percentile, ratio

if TYPE_CHECKING:
    from ..model import LatentRAG

RETRIEVAL_METHODS = ("frozen", "latent_query", "latent")


def retrieval_runners(
    model: LatentRAG,
    store: Any,
    *,
    methods: Sequence[str] = RETRIEVAL_METHODS,
    top_k: int | None = None,
    max_steps: int | None = None,
) -> dict[str, Runner]:
    """``{method: run_batch(questions) -> results}`` for the retrieval methods named.

    Args:
        model: The LatentRAG model.
        store: Its store (anything with ``search(embedding, k)``; ``search_batch`` is used when
            present).
        methods: Any of :data:`RETRIEVAL_METHODS`.
        top_k: Documents per search (default ``model.config.top_k``).
        max_steps: Most retrieval steps of ``latent`` (default ``model.config.max_steps``).

    Raises:
        ValueError: An unknown or repeated method, or none.
    """
    unknown = [m for m in methods if m not in RETRIEVAL_METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ValueError(
            f"bad retrieval methods {list(methods)!r}: name some of "
            f"{', '.join(RETRIEVAL_METHODS)}, each once"
        )
    k = model.config.top_k if top_k is None else int(top_k)
    if k < 1:
        raise ValueError(f"top_k must be >= 1, not {k}")

    def one_step(latent: bool) -> Runner:
        def run(questions: list[str]) -> list[LatentRAGResult]:
            t0 = time.perf_counter()
            emb = model.embed_queries(questions, latent=latent)  # (b, dim)
            t1 = time.perf_counter()
            found = search_many(store, emb, k)
            t2 = time.perf_counter()
            timings = Timings(reasoning=(t1 - t0) * 1e3, retrieval=(t2 - t1) * 1e3)
            return [_one_step_result(docs, timings, int(latent)) for docs in found]

        return run

    def full_loop(questions: list[str]) -> list[LatentRAGResult]:
        gen = latent_loop(
            model, questions, max_steps=max_steps, top_k=k, min_steps=1, generate_answer=False
        )
        return drive(gen, store)

    make = {"frozen": lambda: one_step(False), "latent_query": lambda: one_step(True)}
    make["latent"] = lambda: full_loop
    return {m: make[m]() for m in methods}


def _one_step_result(docs: list[RetrievedDoc], timings: Timings, passes: int) -> LatentRAGResult:
    """A one-search method's outcome as a result: one retrieve step, no answer."""
    timings = timings.model_copy(update={"total": timings.reasoning + timings.retrieval})
    step = Step(index=0, action="retrieve", docs=list(docs))
    return LatentRAGResult(answer="", steps=[step], timings_ms=timings, forward_passes=passes)


def evaluate_retrieval(
    model: LatentRAG,
    store: Any,
    questions: Sequence[Question],
    *,
    methods: Sequence[str] = RETRIEVAL_METHODS,
    top_k: int | None = None,
    max_steps: int | None = None,
    batch_size: int = 1,
    show_progress: bool = True,
    warmup: bool = True,
) -> dict[str, list[Record]]:
    """Run the retrieval methods on every question (``latentrag eval --retrieval-only``).

    Args:
        model: The LatentRAG model.
        store: Its store, built with its document tower.
        questions: Questions with ``supporting_ids`` (others are run but not scored).
        methods: Any of :data:`RETRIEVAL_METHODS` (default all three).
        top_k: Documents per search (default ``model.config.top_k``).
        max_steps: Most retrieval steps of ``latent`` (default ``model.config.max_steps``).
        batch_size: Questions per call; latency per question is the call's wall time divided
            by it.
        show_progress: Show a progress bar.
        warmup: First run each method once, untimed, on the first batch.

    Returns:
        ``{method: [Record per question]}``; score them with :func:`retrieval_report`.

    Raises:
        ValueError: No question names its supporting passages, or bad ``methods``/``top_k``.
    """
    if not any(q.supporting for q in questions):
        raise ValueError(
            "no question lists its supporting passages (`supporting_ids`): retrieval-only "
            "evaluation needs them"
        )
    check_store(store, model.encoder_id, model.dim)
    runners = retrieval_runners(model, store, methods=methods, top_k=top_k, max_steps=max_steps)
    return evaluate(
        runners, questions, batch_size=batch_size, reference=None,
        show_progress=show_progress, warmup=warmup,
    )  # fmt: skip


def ranked_ids(record: Record) -> list[str]:
    """A record's distinct document ids, in step then rank order."""
    return list(dict.fromkeys(record.doc_ids))


def _summary(recs: Sequence[Record]) -> dict[str, Any]:
    scored = [r for r in recs if r.question.supporting]
    lat = [r.latency_ms for r in recs]
    embed = [sum(r.stages_ms.get(s, 0.0) for s in ("prefill", "reasoning", "decode")) for r in recs]
    search = [r.stages_ms.get("retrieval", 0.0) for r in recs]
    return {
        "n": len(scored),
        "recall_at_k": mean(
            [recall_at_k(ranked_ids(r), r.question.supporting) or 0.0 for r in scored]
        ),
        "mrr": mean([reciprocal_rank(ranked_ids(r), r.question.supporting) or 0.0 for r in scored]),
        "docs": mean([float(len(ranked_ids(r))) for r in recs]),
        "mean_steps": mean([float(r.steps) for r in recs]),
        "forward_passes": mean([float(r.result.forward_passes) for r in recs]),
        "mean_ms": mean(lat),
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "stages_ms": {
            "embed": mean(embed),
            "search": mean(search),
            OTHER: mean([r.stages_ms.get(OTHER, 0.0) for r in recs]),
        },
    }


def retrieval_report(records: dict[str, list[Record]], *, k: int, **meta: Any) -> dict[str, Any]:
    """The ``latentrag eval --retrieval-only --json`` report.

    Args:
        records: Output of :func:`evaluate_retrieval`.
        k: Documents per search (recorded; ``frozen`` and ``latent_query`` return ``k``).
        **meta: Extra top-level fields (model, index, machine, ...).

    Returns:
        ``{..meta, "k", "n", "methods": {method: summary}, "ratios", "by_hops"}``; a summary has
        ``n`` (questions scored), ``recall_at_k``, ``mrr``, ``docs``, ``mean_steps``,
        ``forward_passes``, ``mean_ms``, ``p50_ms``, ``p95_ms`` and ``stages_ms`` (``embed``,
        ``search``, ``other``).
    """
    out: dict[str, Any] = dict(meta)
    out["k"] = int(k)
    out["n"] = max((len(r) for r in records.values()), default=0)
    out["methods"] = methods = {name: _summary(recs) for name, recs in records.items()}
    out["ratios"] = {}
    base = methods.get("frozen")
    for name in ("latent_query", "latent"):
        for stat, suffix in (("mean_ms", ""), ("p50_ms", "_p50")):
            have = base is not None and name in methods
            out["ratios"][f"{name}_vs_frozen{suffix}"] = (
                ratio(methods[name][stat], base[stat]) if have else None
            )
    hops = sorted({r.question.hops for recs in records.values() for r in recs} - {None})
    if hops:
        out["by_hops"] = {
            str(h): {
                "methods": {
                    name: _summary([r for r in recs if r.question.hops == h])
                    for name, recs in records.items()
                },
            }
            for h in hops
        }
        for block in out["by_hops"].values():
            block["n"] = max(m["n"] for m in block["methods"].values())
    return out


def retrieval_predictions(records: dict[str, list[Record]]) -> list[dict[str, Any]]:
    """One JSON-able record per question and method (``--predictions``)."""
    rows = []
    for name, recs in records.items():
        for r in recs:
            ids = ranked_ids(r)
            rows.append(
                {
                    "id": r.question.id,
                    "method": name,
                    "question": r.question.question,
                    "hops": r.question.hops,
                    "supporting_ids": list(r.question.supporting),
                    "doc_ids": ids,
                    "steps": [[d.id for d in s.docs] for s in r.result.steps if s.docs],
                    "recall_at_k": recall_at_k(ids, r.question.supporting),
                    "reciprocal_rank": reciprocal_rank(ids, r.question.supporting),
                    "latency_ms": r.latency_ms,
                    "stages_ms": r.stages_ms,
                }
            )
    return rows

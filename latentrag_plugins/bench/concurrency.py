"""``latentrag bench --concurrency``: many clients at once against one engine.

At each level N, N client threads send questions back to back (each waits for its answer
before sending the next) to the model's engine, for LatentRAG and the explicit agent in turn.
The report gives questions/s, p50 and p95 latency per request, and the mean batch size of the
engine's passes, next to the same questions sent as ``run_batch`` calls of N and one client
alone, so a run says what concurrency buys and what the engine wastes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from ..evaluation.stats import percentile

Ask = Callable[[list[int]], list[Any]]  # question indices -> results (one call)


@dataclass
class Method:
    """How a benchmark asks one method: one question per call, and a batch per call."""

    name: str
    engine: Any  # the engine whose passes are counted
    ask: Callable[[int], Any]  # question index -> result
    ask_batch: Ask  # question indices -> results, in one run_batch call


def run_levels(
    methods: Sequence[Method],
    levels: Sequence[int],
    *,
    rounds: int = 2,
    show_progress: bool = True,
) -> dict[str, dict[str, dict[str, float]]]:
    """Measure every method at every concurrency level.

    Args:
        methods: The methods.
        levels: Numbers of concurrent clients.
        rounds: Questions each client sends at each level (and ``run_batch`` calls of N).
        show_progress: Show a progress bar.

    Returns:
        ``{method: {str(N): {"qps", "p50_ms", "p95_ms", "mean_batch", "run_batch_qps",
        "vs_run_batch", "vs_one_client"}}}``.
    """
    out: dict[str, dict[str, dict[str, float]]] = {m.name: {} for m in methods}
    bar = tqdm(
        total=len(methods) * len(levels), desc="bench concurrency", disable=not show_progress
    )
    for n in levels:
        for m in methods:
            m.ask_batch(list(range(n * rounds)))  # untimed: these questions' first-use costs
            row = _clients(m, n, rounds)
            t0 = time.perf_counter()
            for r in range(rounds):
                m.ask_batch([(r * n + i) for i in range(n)])
            row["run_batch_qps"] = n * rounds / (time.perf_counter() - t0)
            row["vs_run_batch"] = row["qps"] / row["run_batch_qps"]
            out[m.name][str(n)] = row
            bar.update(1)
    bar.close()
    for rows in out.values():
        one = rows.get("1", {}).get("qps")
        for row in rows.values():
            row["vs_one_client"] = row["qps"] / one if one else float("nan")
    return out


def _clients(m: Method, n: int, rounds: int) -> dict[str, float]:
    """``n`` client threads, each sending ``rounds`` questions back to back."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(n + 1)

    def client(i: int) -> None:
        start.wait()
        for r in range(rounds):
            t0 = time.perf_counter()
            try:
                m.ask(r * n + i)
            except BaseException as exc:  # reported after the run
                errors.append(exc)
                return
            with lock:
                latencies.append((time.perf_counter() - t0) * 1e3)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    before = (m.engine.stats.passes, m.engine.stats.rows)
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    passes = m.engine.stats.passes - before[0]
    rows = m.engine.stats.rows - before[1]
    return {
        "qps": n * rounds / wall,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "mean_batch": rows / passes if passes else 0.0,
    }


def format_levels(report: dict[str, dict[str, dict[str, float]]]) -> str:
    """The concurrency report as a markdown table."""
    head = "| method | clients | q/s | p50 ms | p95 ms | mean batch | run_batch q/s | vs run_batch | vs 1 client |"
    lines = [head, "|" + "---|" * 9]
    for name, rows in report.items():
        for n, r in rows.items():
            lines.append(
                f"| {name} | {n} | {r['qps']:.2f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                f"{r['mean_batch']:.1f} | {r['run_batch_qps']:.2f} | {r['vs_run_batch']:.2f} | "
                f"{r['vs_one_client']:.2f} |"
            )
    return "\n".join(lines)


@dataclass
class ConcurrencyConfig:
    """Settings of a concurrency run (the CLI's options)."""

    levels: Sequence[int] = (1, 4, 16, 32)  # concurrent clients
    rounds: int = 2  # questions per client per level
    model: str | None = None  # "demo": the shipped models on their world; None: random shape
    shape: str = "tiny"  # random-weight LLM shape (without ``model``)
    retriever: str = "minilm"  # "minilm" or "qwen3-emb-0.6b" (random weights; without ``model``)
    corpus_size: int = 100_000  # synthetic documents (without ``model``)
    steps: int = 2  # forced retrieval steps (without ``model``)
    device: str | None = None
    dtype: str = "auto"
    threads: int | None = None  # torch CPU threads (None: 1 on CPU)
    seed: int = 0
    show_progress: bool = True


def run_concurrency(cfg: ConcurrencyConfig) -> dict[str, Any]:
    """Run the concurrency benchmark and return its JSON-able report."""
    import torch

    from .runner import machine_info

    if not cfg.levels or min(cfg.levels) < 1 or cfg.rounds < 1:
        raise ValueError("concurrency levels and rounds must be positive")
    threads = torch.get_num_threads()
    on_cpu = cfg.device in (None, "cpu") and not torch.cuda.is_available()
    want = cfg.threads if cfg.threads is not None else (1 if on_cpu else None)
    if want is not None:
        torch.set_num_threads(want)
    try:
        methods, meta = (_demo if cfg.model == "demo" else _shape)(cfg)
        for m in methods:
            m.engine.config.threads = torch.get_num_threads()  # the passes run in its thread
        report = run_levels(methods, cfg.levels, rounds=cfg.rounds, show_progress=cfg.show_progress)
        return {
            **meta,
            "levels": list(cfg.levels),
            "rounds": cfg.rounds,
            "machine": machine_info(methods[0].engine.model.device),
            "methods": report,
        }
    finally:
        torch.set_num_threads(threads)


def _demo(cfg: ConcurrencyConfig) -> tuple[list[Method], dict[str, Any]]:
    """The shipped demo models on their world's test questions (their own actions, lengths)."""
    import json

    from ..baselines.explicit import ExplicitAgent
    from ..cli.common import dtype_kwargs
    from ..demo.assets import DEMO_CORPUS, DEMO_QUESTIONS
    from ..demo.index_cache import cached_index
    from ..model import LatentRAG
    from ..speed.precision import precision_name

    kw = dtype_kwargs(cfg.dtype)
    model = LatentRAG.from_pretrained("demo", device=cfg.device, **kw)
    explicit = ExplicitAgent.from_pretrained("demo-explicit", device=cfg.device, **kw)
    store = cached_index(model, DEMO_CORPUS)
    with open(DEMO_QUESTIONS, encoding="utf-8") as fh:
        qs = [json.loads(line)["question"] for line in fh if line.strip()]
    need = max(cfg.levels) * cfg.rounds
    qs = (qs * (need // len(qs) + 1))[:need]
    methods = [
        Method("latent", model.engine, lambda i: model.run(qs[i], store),
               lambda idx: model.run_batch([qs[i] for i in idx], store)),
        Method("explicit", explicit.engine, lambda i: explicit.run(qs[i], store),
               lambda idx: explicit.run_batch([qs[i] for i in idx], store)),
    ]  # fmt: skip
    return methods, {"model": "demo", "dtype": precision_name(model), "questions": "demo test"}


def _shape(cfg: ConcurrencyConfig) -> tuple[list[Method], dict[str, Any]]:
    """Random-weight models of a shape; every question retrieves ``steps`` times (LatentRAG by
    ``min_steps``, the explicit agent by its forced plan) and answers in the paper's lengths."""
    from ..baselines.explicit_force import ExplicitForce
    from ..speed.precision import precision_name
    from . import forcing as F
    from .runner import BenchConfig, build

    need = max(cfg.levels) * cfg.rounds
    bench = BenchConfig(
        shape=cfg.shape, retriever=cfg.retriever, corpus_size=cfg.corpus_size, questions=need,
        steps=cfg.steps,
        batches=(), device=cfg.device, dtype=cfg.dtype, seed=cfg.seed, warmup=0,
        show_progress=cfg.show_progress,
    )  # fmt: skip
    setup = build(bench)
    model, explicit, store, qs = setup.model, setup.explicit, setup.store, setup.questions
    model.config.max_answer_tokens = round(F.LATENT_ANSWER_TOKENS)  # a random LLM never stops
    steps = {"max_steps": cfg.steps, "min_steps": cfg.steps}

    def force(i: int) -> ExplicitForce:
        return ExplicitForce.from_totals(
            cfg.steps, F.EXPLICIT_THOUGHT_TOKENS, F.EXPLICIT_SUBQUERY_TOKENS,
            F.EXPLICIT_ANSWER_TOKENS, index=i,
        )  # fmt: skip

    methods = [
        Method("latent", model.engine, lambda i: model.run(qs[i], store, **steps),
               lambda idx: model.run_batch([qs[i] for i in idx], store, **steps)),
        Method("explicit", explicit.engine,
               lambda i: explicit.run(qs[i], store, max_turns=cfg.steps, force=force(i)),
               lambda idx: explicit.run_batch([qs[i] for i in idx], store, max_turns=cfg.steps,
                                              force=[force(i) for i in idx])),
    ]  # fmt: skip
    meta = {
        "shape": cfg.shape,
        "retriever": cfg.retriever,
        "corpus_size": cfg.corpus_size,
        "steps": cfg.steps,
        "dtype": precision_name(model),
        "questions": "synthetic",
    }
    return methods, meta

"""A load test of a LatentRAG service: requests per second and latency percentiles, with every
answer checked against the local model's.

As a library: :func:`run_load` against a running service. As a command::

    python -m latentrag_plugins.serve.loadtest --replicas 1 2          # the demo, on local Ray
    python -m latentrag_plugins.serve.loadtest --url http://host:8000  # a running service

The first starts the service on a local Ray instance once per replica count (the demo model and
index unless ``--model``/``--index`` say otherwise) and checks every answer against the same
model run in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..evaluation.stats import percentile
from ..results import LatentRAGResult
from .client import RemoteLatentRAG

Endpoint = Literal["ask", "stream", "both"]


@dataclass
class LoadReport:
    """What a load test measured.

    Attributes:
        requests: Requests sent.
        concurrency: Clients sending them, each one request at a time.
        seconds: Wall time from the first request to the last answer.
        latencies_ms: Each answered request's latency, in order of completion.
        errors: Failed requests by error message.
        mismatches: Answers that differ from the expected ones.
        replicas: The service's replicas, where known.
    """

    requests: int
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    mismatches: int = 0
    replicas: int | None = None

    @property
    def answered(self) -> int:
        """Requests that got an answer."""
        return len(self.latencies_ms)

    @property
    def requests_per_s(self) -> float:
        """Answered requests per second."""
        return self.answered / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the answered requests' latencies."""
        return percentile(self.latencies_ms, q) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, Any]:
        """The figures, as JSON-able values."""
        data = asdict(self)
        del data["latencies_ms"]
        return {**data, "answered": self.answered, "requests_per_s": self.requests_per_s,
                "p50_ms": self.percentile_ms(50), "p95_ms": self.percentile_ms(95)}  # fmt: skip


def run_load(
    url: str,
    questions: Sequence[str],
    *,
    requests: int = 200,
    concurrency: int = 16,
    expected: Mapping[str, str] | None = None,
    endpoint: Endpoint = "ask",
    options: Mapping[str, Any] | None = None,
    timeout: float | None = 120.0,
    on_answer: Callable[[int], Any] | None = None,
) -> LoadReport:
    """Send ``requests`` questions (``questions`` in turn) from ``concurrency`` clients at once.

    Args:
        url: The service.
        questions: The questions to cycle through.
        requests: How many requests to send.
        concurrency: Clients, each sending its next request when its last is answered.
        expected: The right answer of each question (a different answer is a mismatch).
        endpoint: ``ask`` (``POST /v1/ask``), ``stream`` (``/v1/ask/stream``) or ``both`` (in
            turn).
        options: Request options (``top_k``, ``max_steps``, ...) for every request.
        timeout: The client's timeout (see :class:`RemoteLatentRAG`).
        on_answer: Called with the number of requests ended so far, after each one.
    """
    if not questions or requests < 1 or concurrency < 1:
        raise ValueError("give questions, and requests and concurrency of at least 1")
    with RemoteLatentRAG(url, timeout=timeout, max_connections=concurrency) as client:
        send = functools.partial(_send, client, endpoint, dict(options or {}))
        return asyncio.run(_load(send, list(questions), requests, concurrency, expected, on_answer))


async def _send(
    client: RemoteLatentRAG, endpoint: Endpoint, options: dict[str, Any], i: int, question: str
) -> LatentRAGResult:
    """Send request ``i`` to its endpoint."""
    if endpoint == "stream" or (endpoint == "both" and i % 2 == 1):
        return await client.submit(question, **options).aresult()
    return await client.aask(question, **options)


async def _load(
    send: Callable[[int, str], Awaitable[LatentRAGResult]],
    questions: list[str],
    requests: int,
    concurrency: int,
    expected: Mapping[str, str] | None,
    on_answer: Callable[[int], Any] | None,
) -> LoadReport:
    report = LoadReport(requests, concurrency, 0.0)
    errors: collections.Counter[str] = collections.Counter()
    todo = iter(range(requests))

    async def one(i: int) -> None:
        question = questions[i % len(questions)]
        t0 = time.perf_counter()
        try:
            result = await send(i, question)
        except Exception as exc:  # a failed request is a figure here, not a failure
            errors[f"{type(exc).__name__}: {exc}"] += 1
        else:
            report.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            if expected is not None and result.answer != expected.get(question):
                report.mismatches += 1
        if on_answer is not None:
            on_answer(report.answered + sum(errors.values()))

    async def client_loop() -> None:
        for i in todo:  # one shared iterator: each request is sent once
            await one(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    report.seconds = time.perf_counter() - t0
    report.errors = dict(errors)
    return report


# ---------------------------------------------------------------------- the command
def main(argv: list[str] | None = None) -> int:
    """``python -m latentrag_plugins.serve.loadtest``: print the figures per replica count."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.index is None and args.model != "demo" and not (args.url and args.no_check):
        parser.error("give --index, the index the service searches (or --no-check with --url)")
    questions = _questions(args.questions)[: args.requests]
    with tempfile.TemporaryDirectory() as tmp:
        from ..cli.common import load_model

        model = None if args.url and args.no_check else load_model(args.model)
        index = args.index or (model and _demo_index(model, tmp))
        expected = None if args.no_check else _expected(model, index, questions)
        if args.url:
            reports = [_measure(args, args.url, questions, expected, None)]
        else:
            reports = _local(args, index, questions, expected)
    if args.json:
        text = json.dumps([r.summary() for r in reports], indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    else:
        print(table(reports))
    return 0 if all(not r.errors and not r.mismatches for r in reports) else 1


def table(reports: Sequence[LoadReport]) -> str:
    """The figures as a Markdown table."""
    rows = ["| replicas | requests | clients | requests/s | p50 ms | p95 ms | errors | wrong |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in reports:
        rows.append(
            f"| {r.replicas or '?'} | {r.requests} | {r.concurrency} | {r.requests_per_s:.1f} | "
            f"{r.percentile_ms(50):.0f} | {r.percentile_ms(95):.0f} | "
            f"{sum(r.errors.values())} | {r.mismatches} |"
        )
    return "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m latentrag_plugins.serve.loadtest",
        description="Load-test a LatentRAG service: requests/s and p50/p95 latency, every "
        "answer checked against the local model's. Without --url, start the service on a "
        "local Ray instance for each --replicas count.",
    )
    p.add_argument("--url", help="A running service (default: start one per --replicas).")
    p.add_argument(
        "--model", default="demo", help="Checkpoint served, run here to check the answers (demo)."
    )
    p.add_argument("--index", help="FAISS index directory (default: the demo corpus' index).")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="Default: 1 2.")
    p.add_argument("--requests", type=int, default=200, help="Requests per run (default 200).")
    p.add_argument("--concurrency", type=int, default=16, help="Clients at once (default 16).")
    p.add_argument(
        "--endpoint", choices=["ask", "stream", "both"], default="ask", help="Default: ask."
    )
    p.add_argument("--questions", help="Questions JSONL (default: the demo's test questions).")
    p.add_argument("--no-check", action="store_true", help="Don't compare with local answers.")
    p.add_argument("--port", type=int, default=8000, help="Local service's port (8000).")
    p.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="OUT",
        help="Write the figures as JSON to OUT (no OUT or -: stdout).",
    )  # fmt: skip
    return p


def _questions(path: str | None) -> list[str]:
    from ..demo.assets import DEMO_QUESTIONS

    with open(path or DEMO_QUESTIONS, encoding="utf-8") as f:
        return [json.loads(line)["question"] for line in f if line.strip()]


def _measure(
    args: argparse.Namespace,
    url: str,
    questions: list[str],
    expected: Mapping[str, str] | None,
    replicas: int | None,
) -> LoadReport:
    run_load(url, questions, requests=args.concurrency, concurrency=args.concurrency)  # warm up
    bar = _progress(args.requests, f"{replicas or '?'} replica(s)")
    report = run_load(
        url, questions, requests=args.requests, concurrency=args.concurrency,
        expected=expected, endpoint=args.endpoint, on_answer=lambda n: bar.update(1),
    )  # fmt: skip
    bar.close()
    report.replicas = replicas
    return report


def _expected(model: Any, index: str, questions: list[str]) -> dict[str, str]:
    """The answer of each question by ``model`` run here, over ``index``."""
    from ..cli.common import load_index

    store = load_index(index, model)
    unique = list(dict.fromkeys(questions))
    return {q: r.answer for q, r in zip(unique, model.run_batch(unique, store))}


def _local(
    args: argparse.Namespace, index: str, questions: list[str], expected: Mapping[str, str] | None
) -> list[LoadReport]:
    """Serve the model on local Ray for each replica count and measure it."""
    from .config import ServeConfig
    from .launcher import connect, launch, stop

    reports = []
    try:
        for n in args.replicas:
            config = ServeConfig(model=args.model, index=index, replicas=n)
            connect(config, log_to_driver=False)  # no access log of every request here
            url = launch(config, port=args.port)
            reports.append(_measure(args, url, questions, expected, n))
    finally:
        stop()
    return reports


def _demo_index(model: Any, tmp: str) -> str:
    from ..demo.assets import DEMO_CORPUS
    from ..demo.index_cache import cached_index

    cached_index(model, DEMO_CORPUS).save(f"{tmp}/index")
    return f"{tmp}/index"


def _progress(total: int, what: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit="req", disable=not sys.stderr.isatty())


if __name__ == "__main__":
    sys.exit(main())

"""``latentrag bench``: the latency benchmark of LatentRAG vs explicit and naive RAG."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .common import positive_int


def _sizes(flag: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            out = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes sizes like 1,8,32, got {text!r}"
            ) from None
        if not out or min(out) < 1:
            raise argparse.ArgumentTypeError(f"{flag} sizes must be positive integers")
        return out

    return parse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..bench.runner import DTYPE_CHOICES, LLM_CHOICES, RETRIEVER_CHOICES

    p = sub.add_parser(
        "bench",
        help="Latency benchmark: LatentRAG vs explicit agentic RAG vs naive RAG (no weights).",
        description=(
            "Build random-weight models of a named shape, a synthetic corpus of random unit "
            "vectors with ~130-token texts, and force generation lengths and actions to the "
            "paper's per-question averages (Table 8: explicit thought 121.8, subquery 37.9, "
            "answer 9.6 tokens; LatentRAG answer 5.8). Methods are interleaved question by "
            "question. Reports p50/p95 latency, the stage breakdown, forward passes, the "
            "latent/explicit and latent/naive ratios and throughput at each batch size."
        ),
    )
    p.add_argument("--shape", default="tiny", choices=LLM_CHOICES, help="LLM shape (default tiny).")
    p.add_argument(
        "--retriever", default="minilm", choices=RETRIEVER_CHOICES,
        help="Retriever: minilm (real weights) or qwen3-emb-0.6b (random weights).",
    )  # fmt: skip
    p.add_argument(
        "--corpus-size", type=int, default=100_000, metavar="N",
        help="Synthetic documents in the store (default 100000).",
    )  # fmt: skip
    p.add_argument(
        "--questions", type=int, default=20, metavar="N",
        help="Questions timed one by one per method (default 20).",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=2, help="Retrieval steps per question (default 2).")
    p.add_argument(
        "--batch", type=_sizes("--batch"), default=[1, 8, 32], metavar="LIST",
        help="Batch sizes for throughput (default 1,8,32).",
    )  # fmt: skip
    p.add_argument(
        "--concurrency", type=_sizes("--concurrency"), default=None, metavar="LIST",
        help="Instead: N concurrent clients against one engine, for each N in LIST (e.g. "
        "1,4,16,32), for LatentRAG and the explicit agent: questions/s, p50/p95 per request and "
        "the mean batch of the engine's passes, next to run_batch of N and one client alone.",
    )  # fmt: skip
    p.add_argument(
        "--rounds", type=positive_int, default=2,
        help="With --concurrency: questions each client sends per level (default 2).",
    )  # fmt: skip
    p.add_argument(
        "--model", choices=["demo"], default=None,
        help="With --concurrency: the shipped demo models on their world's test questions "
        "(their own actions and lengths) instead of random weights of --shape.",
    )  # fmt: skip
    p.add_argument("--decode", action="store_true", help="LatentRAG also decodes its latents.")
    p.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="OUT",
        help="Print the JSON report (or write it to OUT); the table then goes to stderr.",
    )  # fmt: skip
    p.add_argument("--plot", metavar="OUT.png", default=None, help="Write the stage-latency chart.")
    p.add_argument("--device", default=None, help="Device, e.g. cpu or cuda (default: auto).")
    p.add_argument(
        "--dtype", default="auto", choices=DTYPE_CHOICES,
        help="Weights' dtype for every method (default auto: as a loaded model runs, bfloat16 "
        "on GPU, on CPU mixed where it multiplies bfloat16 natively, else float32).",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=positive_int, default=None,
        help="Torch CPU threads (default: 1 for tiny shapes on CPU, else torch's default).",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="Seed of weights and data (default 0).")
    p.set_defaults(func=run)
    return p


def format_report(rep: dict) -> str:
    """The bench report as markdown: latency/stages, throughput, ratios."""
    from ..evaluation.table import latency_table, ratios_line, throughput_table

    m = rep["machine"]
    head = (
        f"shape {rep['shape']}, retriever {rep['retriever']}, corpus {rep['corpus_size']:,} docs, "
        f"{rep['questions']} questions, {rep['steps']} steps, decode={rep['decode']}, "
        f"{rep['dtype']}; "
        f"device {m['device']} ({m['gpu'] or m['cpu']}, {m['cpu_count']} cores, "
        f"{m['torch_threads']} torch threads)"
    )
    return "\n\n".join(
        [
            head,
            latency_table(rep["methods"]),
            throughput_table(rep["methods"]),
            ratios_line(rep["ratios"]),
        ]
    )


def run(args: argparse.Namespace) -> int:
    from ..bench.runner import BenchConfig, run_bench
    from ..io_utils import write_json_atomic
    from .common import check_output_files, check_plot_extra, print_json

    check_output_files(args.json, args.plot)
    if args.concurrency is not None:
        return _run_concurrency(args)
    if args.model is not None:
        raise ValueError("--model goes with --concurrency (the latency bench uses random weights)")
    check_plot_extra(args.plot)
    cfg = BenchConfig(
        shape=args.shape,
        retriever=args.retriever,
        corpus_size=args.corpus_size,
        questions=args.questions,
        steps=args.steps,
        batches=args.batch,
        decode=args.decode,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        seed=args.seed,
    )
    rep = run_bench(cfg)
    to_stdout = args.json == "-"
    print(format_report(rep), file=sys.stderr if to_stdout else sys.stdout)
    if to_stdout:
        print_json(rep)
    elif args.json:
        write_json_atomic(args.json, rep)
    if args.plot:
        from ..evaluation.plot import plot_stages

        plot_stages(
            rep["methods"], args.plot, title=f"latentrag bench ({rep['shape']}): latency by stage"
        )
    return 0


def _run_concurrency(args: argparse.Namespace) -> int:
    from ..bench.concurrency import ConcurrencyConfig, format_levels, run_concurrency
    from ..io_utils import write_json_atomic
    from .common import print_json

    if args.plot:
        raise ValueError("--plot is for the latency bench; leave it out with --concurrency")
    cfg = ConcurrencyConfig(
        levels=args.concurrency, rounds=args.rounds, model=args.model, shape=args.shape,
        retriever=args.retriever, corpus_size=args.corpus_size, steps=args.steps, device=args.device, dtype=args.dtype,
        threads=args.threads, seed=args.seed,
    )  # fmt: skip
    rep = run_concurrency(cfg)
    to_stdout = args.json == "-"
    m = rep["machine"]
    what = "demo models" if args.model else f"shape {rep['shape']}, {rep['steps']} steps"
    head = (
        f"{what}, {rep['dtype']}, {rep['rounds']} questions per client; device {m['device']} "
        f"({m['gpu'] or m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads)"
    )
    print(
        head + "\n\n" + format_levels(rep["methods"]), file=sys.stderr if to_stdout else sys.stdout
    )
    if to_stdout:
        print_json(rep)
    elif args.json:
        write_json_atomic(args.json, rep)
    return 0

"""``latentrag eval``: EM/F1, retrieval quality and latency of LatentRAG next to baselines, or
(``--retrieval-only``) the recall and MRR of its query embeddings next to the frozen tower's."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import add_device_arg, add_dtype_arg, add_extractive_arg, add_model_arg


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="Evaluate LatentRAG (and baselines) on a questions file: EM, F1, retrieval, latency.",
        description=(
            "Answer every question with LatentRAG and the chosen baselines over the same index, "
            "interleaved batch by batch. Reports EM and F1 (SQuAD normalisation, max over gold "
            "answers), retrieval success (a retrieved document contains a gold answer), "
            "supporting-passage recall (when questions carry `supporting_ids`), retrieval "
            "overlap with the explicit agent's documents, mean steps, latency mean/p50/p95 (the "
            "wall time of each call, after one untimed warm-up batch per method) with the stage "
            "breakdown and the time outside every stage (`other`), forward passes and output "
            "tokens; per hop count when the questions carry `hops`. Questions: JSONL with id, "
            "question, golden_answers. With --retrieval-only, no answers: recall@k (the share "
            "of a question's `supporting_ids` among its documents; k = --top-k, default the "
            "model's top_k) and MRR (the reciprocal rank of its first supporting passage) of "
            "three ways to search: `frozen` (the frozen document tower on the question), "
            "`latent_query` (the first latent step's query embedding: one LLM pass) and "
            "`latent` (the full latent loop without its answer: every document it retrieved), "
            "with the latency per question of each."
        ),
    )
    add_model_arg(p)
    p.add_argument("--index", required=True, metavar="DIR", help="FAISS index directory.")
    p.add_argument("--questions", required=True, metavar="FILE", help="Questions JSONL file.")
    p.add_argument(
        "--baselines",
        default="",
        metavar="LIST",
        help="Comma-separated baselines: `naive` (single-step RAG on the same checkpoint) and/or "
        "`explicit:DIR` (an explicit agent checkpoint, e.g. from `latentrag init --explicit`).",
    )
    p.add_argument("--no-latent", action="store_true", help="Evaluate only the baselines.")
    p.add_argument(
        "--retrieval-only", action="store_true",
        help="Evaluate retrieval alone: recall@k and MRR of the supporting passages (questions "
        "need `supporting_ids`) and latency, for the --methods below; no answers.",
    )  # fmt: skip
    p.add_argument(
        "--methods", default=None, metavar="LIST",
        help="With --retrieval-only: comma-separated methods among `frozen`, `latent_query` and "
        "`latent` (default: all three).",
    )  # fmt: skip
    p.add_argument("--decode", action="store_true", help="Decode LatentRAG's latent steps too.")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="First N questions only.")
    p.add_argument(
        "--batch-size", type=int, default=1, metavar="N",
        help="Questions per batch (default 1; latency is amortised per question above 1).",
    )  # fmt: skip
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="Most retrieval steps (LatentRAG) and searches (the explicit agent's max_turns).",
    )
    p.add_argument("--top-k", type=int, default=None, help="Documents per retrieval.")
    add_extractive_arg(p)
    p.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="OUT",
        help="Write the JSON report to OUT (no OUT or -: stdout).",
    )  # fmt: skip
    p.add_argument("--plot", metavar="OUT.png", default=None, help="Write the stage-latency chart.")
    p.add_argument(
        "--predictions", metavar="OUT.jsonl", default=None, help="Write per-question records."
    )
    add_device_arg(p)
    add_dtype_arg(p, what="the LatentRAG model (and naive RAG)")
    add_dtype_arg(p, "--explicit-dtype", "the explicit agents")
    p.set_defaults(func=run)
    return p


def parse_baselines(spec: str) -> list[tuple[str, str | None]]:
    """``"explicit:DIR,naive"`` -> ``[("explicit", "DIR"), ("naive", None)]``."""
    out: list[tuple[str, str | None]] = []
    for part in (s.strip() for s in spec.split(",") if s.strip()):
        kind, _, arg = part.partition(":")
        kind = kind.strip().lower()
        if kind == "naive" and not arg:
            out.append(("naive", None))
        elif kind == "explicit" and arg:
            out.append(("explicit", arg))
        else:
            raise ValueError(f"bad baseline {part!r}: use `naive` or `explicit:DIR`")
    return out


def run(args: argparse.Namespace) -> int:
    if args.retrieval_only:
        return run_retrieval(args)
    if args.methods is not None:
        raise ValueError("--methods applies only with --retrieval-only")
    from ..bench.runner import machine_info
    from ..evaluation import evaluate, read_questions, report
    from ..evaluation.table import latency_table, quality_table, ratios_line
    from ..inference import question_prompt
    from ..io_utils import write_json_atomic, write_jsonl_atomic
    from .common import (
        check_output_files,
        check_plot_extra,
        dtype_kwargs,
        load_index,
        load_model,
        method_settings,
    )

    check_output_files(args.json, args.plot, args.predictions, inputs=[args.questions])
    check_plot_extra(args.plot)
    baselines = parse_baselines(args.baselines)
    if args.no_latent and not baselines:
        raise ValueError("--no-latent needs at least one --baselines entry")
    questions = read_questions(args.questions, limit=args.limit)
    model = load_model(args.model, args.device, args.dtype, args.trust_remote_code)
    for q in questions if not args.no_latent else ():  # before any work, not midway
        try:
            question_prompt(model, q.question)
        except ValueError as exc:
            raise ValueError(f"{args.questions}: question {q.id!r}: {exc}") from None
    store = load_index(args.index, model)
    if args.extractive:
        model.config.extractive_answers = True
    runners = {}
    settings: dict[str, dict[str, Any]] = {}  # per method: dtype, answer mode, step budget
    if not args.no_latent:
        runners["latent"] = lambda qs: model.run_batch(
            qs, store, decode=args.decode, max_steps=args.max_steps, top_k=args.top_k
        )
        settings["latent"] = method_settings(model, args.max_steps)
    for kind, arg in baselines:
        if kind == "naive":
            from ..baselines.naive import NaiveRAG

            naive = NaiveRAG(model, top_k=args.top_k)
            runners["naive"] = lambda qs, n=naive: n.run_batch(qs, store)
            settings["naive"] = method_settings(naive, None)
        else:
            from ..baselines.explicit import ExplicitAgent

            agent = ExplicitAgent.from_pretrained(
                arg, device=args.device, trust_remote_code=args.trust_remote_code,
                **dtype_kwargs(args.explicit_dtype),
            )  # fmt: skip
            if args.extractive:
                agent.config.extractive_answers = True
            name = "explicit" if "explicit" not in runners else f"explicit_{len(runners)}"
            runners[name] = lambda qs, a=agent: a.run_batch(
                qs, store, max_turns=args.max_steps, top_k=args.top_k
            )
            settings[name] = method_settings(agent, args.max_steps)
    records = evaluate(
        runners, questions, batch_size=args.batch_size, show_progress=sys.stderr.isatty()
    )
    rep = report(
        records,
        model=args.model,
        index=args.index,
        questions_file=args.questions,
        batch_size=args.batch_size,
        decode=args.decode,
        machine=machine_info(model.device),
        settings=settings,
    )
    to_stdout = args.json == "-"
    text = "\n\n".join(
        [quality_table(rep["methods"]), latency_table(rep["methods"]), ratios_line(rep["ratios"])]
    )
    if "by_hops" in rep:
        for h, block in rep["by_hops"].items():
            text += f"\n\n{h}-hop questions (n={block['n']}):\n\n" + quality_table(block["methods"])
    print(text, file=sys.stderr if to_stdout else sys.stdout)
    if args.json:
        if to_stdout:
            from .common import print_json

            print_json(rep)
        else:
            write_json_atomic(args.json, rep)
    if args.predictions:
        write_jsonl_atomic(
            args.predictions, [r.to_json() for recs in records.values() for r in recs]
        )
    if args.plot:
        from ..evaluation.plot import plot_stages

        plot_stages(
            rep["methods"], args.plot, title="latentrag eval: latency by stage", score_key="em"
        )
    return 0


def parse_methods(spec: str | None) -> tuple[str, ...] | None:
    """``"frozen,latent"`` -> ``("frozen", "latent")``; None stays None (the API's default)."""
    if spec is None:
        return None
    methods = tuple(m.strip().lower() for m in spec.split(",") if m.strip())
    if not methods:
        raise ValueError("--methods is empty: name some of frozen, latent_query, latent")
    return methods


_NOT_RETRIEVAL = (  # (attribute, flag): what --retrieval-only does not do
    ("baselines", "--baselines"),
    ("no_latent", "--no-latent"),
    ("decode", "--decode"),
    ("plot", "--plot"),
    ("extractive", "--extractive"),
)


def run_retrieval(args: argparse.Namespace) -> int:
    """``latentrag eval --retrieval-only``: recall@k, MRR and latency per retrieval method."""
    for attr, flag in _NOT_RETRIEVAL:
        if getattr(args, attr):
            raise ValueError(f"{flag} does not apply with --retrieval-only (no answers)")
    if args.explicit_dtype != "auto":
        raise ValueError("--explicit-dtype does not apply with --retrieval-only (no baselines)")
    from ..bench.runner import machine_info
    from ..evaluation import evaluate_retrieval, read_questions, retrieval_report
    from ..evaluation.retrieval import RETRIEVAL_METHODS, retrieval_predictions
    from ..evaluation.table import retrieval_table
    from ..inference import question_prompt
    from ..io_utils import write_json_atomic, write_jsonl_atomic
    from ..speed.precision import precision_name
    from .common import check_output_files, load_index, load_model

    check_output_files(args.json, args.predictions, inputs=[args.questions])
    methods = parse_methods(args.methods) or RETRIEVAL_METHODS
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, not {args.top_k}")
    questions = read_questions(args.questions, limit=args.limit)
    if not any(q.supporting for q in questions):
        raise ValueError(
            f"{args.questions}: no question lists `supporting_ids`; --retrieval-only needs them"
        )
    model = load_model(args.model, args.device, args.dtype, args.trust_remote_code)
    if {"latent_query", "latent"} & set(methods):
        for q in questions:  # before any work, not midway
            try:
                question_prompt(model, q.question)
            except ValueError as exc:
                raise ValueError(f"{args.questions}: question {q.id!r}: {exc}") from None
    store = load_index(args.index, model)
    records = evaluate_retrieval(
        model, store, questions, methods=methods, top_k=args.top_k, max_steps=args.max_steps,
        batch_size=args.batch_size, show_progress=sys.stderr.isatty(),
    )  # fmt: skip
    k = model.config.top_k if args.top_k is None else args.top_k
    max_steps = model.config.max_steps if args.max_steps is None else args.max_steps
    rep = retrieval_report(
        records, k=k, model=args.model, index=args.index, questions_file=args.questions,
        batch_size=args.batch_size, machine=machine_info(model.device),
        settings={"dtype": precision_name(model), "top_k": k, "max_steps": max_steps},
    )  # fmt: skip
    text = retrieval_table(rep["methods"], k)
    for h, block in rep.get("by_hops", {}).items():
        text += f"\n\n{h}-hop questions (n={block['n']}):\n\n"
        text += retrieval_table(block["methods"], k)
    to_stdout = args.json == "-"
    print(text, file=sys.stderr if to_stdout else sys.stdout)
    if to_stdout:
        from .common import print_json

        print_json(rep)
    elif args.json:
        write_json_atomic(args.json, rep)
    if args.predictions:
        write_jsonl_atomic(args.predictions, retrieval_predictions(records))
    return 0

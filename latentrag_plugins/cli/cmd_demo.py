"""``latentrag demo``: the shipped demo model answering multi-hop questions over a FAISS index,
next to the explicit agent and naive RAG."""

from __future__ import annotations

import argparse
import sys

from .common import add_device_arg, add_dtype_arg, add_extractive_arg, dtype_kwargs


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="Run the shipped demo model on the demo world (no training, no hub).",
        description=(
            "Build (once, then cached) the FAISS index of the demo corpus, load the shipped "
            "LatentRAG demo model and explicit agent, and answer a few test questions: the "
            "answer, each latent step's decoded thought and subquery, the retrieved titles, and "
            "the latency of LatentRAG vs the explicit agent vs naive RAG."
        ),
    )
    p.add_argument("--question", help="Ask your own question about the demo world.")
    p.add_argument("-n", "--num-questions", type=int, default=4, help="Test questions (4).")
    p.add_argument(
        "--json",
        action="store_true",
        help="Print the `latentrag eval` JSON of the three methods on the test split.",
    )
    p.add_argument(
        "--limit", type=int, default=100, help="Test questions for --json (default 100, 0: all)."
    )
    add_extractive_arg(p)
    add_device_arg(p)
    add_dtype_arg(p, what="the LatentRAG model (and naive RAG)")
    add_dtype_arg(p, "--explicit-dtype", "the explicit agent")
    p.add_argument(
        "--build",
        metavar="DIR",
        help="Instead: run the whole demo recipe (world, base LM, training, eval) into DIR.",
    )
    p.add_argument(
        "--preset", choices=["demo", "test"], default="demo", help="Recipe size for --build."
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..baselines.explicit import ExplicitAgent
    from ..baselines.naive import NaiveRAG
    from ..demo.assets import DEMO_CORPUS, DEMO_QUESTIONS
    from ..demo.index_cache import cached_index
    from ..evaluation import read_questions
    from ..model import LatentRAG

    if args.build:
        from ..demo.recipe import run_recipe

        rep = run_recipe(args.build, args.preset, device=args.device)
        print(
            f"built the demo models in {args.build}; EM: "
            + ", ".join(f"{m} {v['em']:.3f}" for m, v in rep["methods"].items())
        )
        return 0
    if args.question is not None and not args.question.strip():
        raise ValueError("question is empty: ask a non-empty question")
    if args.question is not None and args.json:
        raise ValueError("--json reports the test split; leave out --question (or --json)")
    if args.num_questions < 1 or args.limit < 0:
        raise ValueError("--num-questions must be >= 1 and --limit >= 0 (0: all)")
    from ..threads import apply_default

    apply_default()
    model = LatentRAG.from_pretrained("demo", device=args.device, **dtype_kwargs(args.dtype))
    explicit = ExplicitAgent.from_pretrained(
        "demo-explicit", device=args.device, **dtype_kwargs(args.explicit_dtype)
    )
    if args.extractive:
        model.config.extractive_answers = explicit.config.extractive_answers = True
    naive = NaiveRAG(model)
    store = cached_index(model, DEMO_CORPUS)
    if args.json:
        return _json_report(args, model, explicit, naive, store, DEMO_QUESTIONS)
    test = read_questions(DEMO_QUESTIONS)
    if args.question:
        questions = [with_gold(args.question, test)]
    else:
        questions = _pick(test, args.num_questions)
    model.engine.warmup()  # untimed: first calls pay one-off costs (kernels, packed weights)
    explicit.engine.warmup()
    naive.run(questions[0][0], store)
    from .cmd_ask import THOUGHTS_NOTE

    print(THOUGHTS_NOTE)
    for question, golds in questions:
        _show(question, golds, model, explicit, naive, store)
    return 0


def with_gold(question: str, test):  # noqa: ANN001, ANN201 - evaluation.Question list
    """``(question, golds)``: the gold answers when ``question`` is one of ``test`` (case and
    spacing aside), else None."""
    key = " ".join(question.lower().split())
    return question, next(
        (q.golds for q in test if " ".join(q.question.lower().split()) == key), None
    )


def _pick(questions, n: int):  # noqa: ANN001, ANN202 - evaluation.Question list
    """Up to ``n`` questions, cycling through hop counts so every kind shows."""
    by_hops: dict = {}
    for q in questions:
        by_hops.setdefault(q.hops, []).append(q)
    out, i = [], 0
    while len(out) < n and any(i < len(v) for v in by_hops.values()):
        out += [(v[i].question, v[i].golds) for v in by_hops.values() if i < len(v)]
        i += 1
    return out[:n]


def _show(question, golds, model, explicit, naive, store) -> None:  # noqa: ANN001
    from ..decoding import decode_latents

    latent = model.run(question, store)
    decode_latents(model, [latent])  # after timing: thoughts for display only
    exp = explicit.run(question, store)
    nai = naive.run(question, store)
    print(f"\nQ: {question}" + (f"   (gold: {' / '.join(golds)})" if golds else ""))
    for s in latent.steps:
        titles = ", ".join(d.title for d in s.docs)
        print(f"  step {s.index} [{s.action}{', forced' if s.forced else ''}]")
        print(f"    thought:  {s.thought}")
        if s.action == "retrieve":
            print(f"    subquery: {s.subquery}")
            print(f"    retrieved: {titles}")
    rows = [("LatentRAG", latent), ("explicit agent", exp), ("naive RAG", nai)]
    for name, r in rows:
        print(
            f"  {name:<15} {r.answer!r:<32} {r.timings_ms.total:8.0f} ms  "
            f"{r.forward_passes:4d} passes  "
            f"{sum(s.action == 'retrieve' for s in r.steps)} retrievals"
        )
    if not golds:  # a question of the user's: say when the world does not hold it
        from ..demo.out_of_world import out_of_world_note

        note = out_of_world_note(question, [d for s in latent.steps for d in s.docs])
        if note:
            print(f"  {note}")


def _json_report(args, model, explicit, naive, store, questions_path) -> int:  # noqa: ANN001
    from ..bench.runner import machine_info
    from ..evaluation import evaluate, read_questions, report
    from .common import method_settings, print_json

    questions = read_questions(questions_path, limit=args.limit or None)
    runners = {
        "latent": lambda qs: model.run_batch(qs, store),
        "explicit": lambda qs: explicit.run_batch(qs, store),
        "naive": lambda qs: naive.run_batch(qs, store),
    }
    records = evaluate(runners, questions, show_progress=sys.stderr.isatty())
    print_json(
        report(
            records,
            model="demo",
            questions_file=str(questions_path),
            machine=machine_info(model.device),
            settings={
                "latent": method_settings(model, None),
                "explicit": method_settings(explicit, None),
                "naive": method_settings(naive, None),
            },
        )
    )
    return 0

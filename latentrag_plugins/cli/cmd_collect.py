"""``latentrag collect``: an explicit teacher's trajectories over your corpus, for training."""

from __future__ import annotations

import argparse

from .common import add_device_arg, add_dtype_arg, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "collect",
        help="Run an explicit teacher agent over your questions and store; keep the "
        "trajectories that reach a gold answer, as training data.",
        description=(
            "Run an explicit agent that speaks the Search-R1 protocol (a checkpoint saved by "
            "latentrag, `demo-explicit`, or any Hugging Face causal LM such as a released "
            "Search-R1 model, which then searches with the index's encoder) over questions "
            '({"id", "question", "golden_answers"} per line) and an index. Keep the '
            "trajectories whose answer matches a gold answer (exact match, SQuAD "
            "normalisation) and write them in the trajectory schema that `latentrag prepare` "
            "reads. Batched on the agent's engine; an interrupted run continues with --resume."
        ),
    )
    p.add_argument("questions", metavar="QUESTIONS.jsonl", help="Questions with gold answers.")
    p.add_argument("output", metavar="OUT.jsonl", help="Trajectory file to write.")
    p.add_argument(
        "--teacher", required=True,
        help="Explicit agent checkpoint, `demo-explicit`, or a causal LM's hub id or path.",
    )  # fmt: skip
    p.add_argument("--index", required=True, help="Index directory (latentrag index).")
    p.add_argument(
        "--batch-size", type=positive_int, default=16,
        help="Questions sent to the teacher at a time (default 16).",
    )  # fmt: skip
    p.add_argument("--max-turns", type=int, default=None, help="Most searches (teacher's).")
    p.add_argument("--top-k", type=positive_int, default=None, help="Documents per search.")
    p.add_argument("--limit", type=int, default=0, help="Use the first N questions (0: all).")
    p.add_argument(
        "--keep-wrong", action="store_true", help="Also keep trajectories with a wrong answer."
    )
    p.add_argument(
        "--resume", action="store_true", help="Continue an interrupted collection into OUT."
    )
    p.add_argument("--json", action="store_true", help="Print the counts as JSON.")
    add_device_arg(p)
    add_dtype_arg(p, what="the teacher's weights")
    p.add_argument(
        "--trust-remote-code", action="store_true",
        help="Run custom model code the teacher needs (only for sources you trust).",
    )  # fmt: skip
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import sys

    from ..evaluation.questions import read_questions
    from ..training.collect import collect
    from .common import check_output_files, print_json

    check_output_files(args.output, inputs=[args.questions])
    if args.limit < 0:
        raise ValueError("--limit must be >= 0 (0: all)")
    questions = read_questions(args.questions, limit=args.limit or None)
    store, agent = _teacher(args)
    stats = collect(
        agent, store, questions, args.output, batch_size=args.batch_size,
        max_turns=args.max_turns, top_k=args.top_k, keep_wrong=args.keep_wrong,
        resume=args.resume, show_progress=sys.stderr.isatty() or not args.json,
    )  # fmt: skip
    if args.json:
        print_json(stats.as_dict())
        return 0
    why = ", ".join(f"{k}: {v}" for k, v in sorted(stats.reasons.items()))
    print(f"kept {stats.kept}, dropped {stats.dropped}" + (f" ({why})" if why else ""))
    print(f"wrote {args.output}")
    return 0


def _teacher(args: argparse.Namespace) -> tuple[object, object]:
    """The index and the teacher agent (a bare causal LM searches with the index's encoder)."""
    from ..baselines.explicit import ExplicitAgent
    from ..baselines.explicit_config import is_explicit_checkpoint
    from ..demo.assets import resolve_checkpoint
    from ..devices import loaded_dtypes, resolve_device
    from ..store.faiss_store import FaissStore
    from .common import dtype_kwargs

    store = FaissStore.load(args.index)
    kw = dtype_kwargs(args.dtype)
    root = resolve_checkpoint(args.teacher)
    if root.is_dir() and is_explicit_checkpoint(root):
        agent = ExplicitAgent.from_pretrained(
            root, device=args.device, trust_remote_code=args.trust_remote_code, **kw
        )
    else:  # a causal LM: built as an agent, run in the dtypes a loaded one would take
        dev = resolve_device(args.device)
        dtype, wide = loaded_dtypes(dev, kw["dtype"], kw["wide_dtype"])
        agent = ExplicitAgent.init(
            args.teacher, store.encoder_id, device=dev, dtype=dtype,
            trust_remote_code=args.trust_remote_code,
        )  # fmt: skip
        if wide is not None:
            agent.to_device(dev, dtype, wide)
    return store, agent

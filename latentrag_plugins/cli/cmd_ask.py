"""``latentrag ask``: answer a question with a LatentRAG model over a FAISS index."""

from __future__ import annotations

import argparse
import sys

from .common import add_device_arg, add_dtype_arg, add_extractive_arg, add_model_arg, dtype_kwargs


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "ask",
        help="Answer a question with a LatentRAG model over an index.",
        description=(
            "Run the latent reasoning/retrieval loop and print the answer and its steps. Given "
            "an explicit agent checkpoint (e.g. --model demo-explicit), run that agent instead: "
            "its thoughts and subqueries are text already."
        ),
    )
    p.add_argument("question", help="The question.")
    add_model_arg(p, what="LatentRAG (or explicit agent) checkpoint directory", explicit=True)
    p.add_argument("--index", required=True, metavar="DIR", help="FAISS index directory.")
    p.add_argument("--decode", action="store_true", help="Decode latent thoughts and subqueries.")
    p.add_argument("--logit-lens", action="store_true", help="Show top tokens of latent tokens.")
    p.add_argument(
        "--max-steps", type=int, default=None, help="Most retrieval steps (explicit: searches)."
    )
    p.add_argument("--top-k", type=int, default=None, help="Documents per step.")
    add_extractive_arg(p, "The answer")
    p.add_argument("--json", action="store_true", help="Print the result as JSON.")
    add_device_arg(p)
    add_dtype_arg(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..baselines.explicit import ExplicitAgent, is_explicit_checkpoint
    from ..demo.assets import DEMO_CHECKPOINTS, resolve_checkpoint
    from .common import load_index, load_model, print_json

    if not args.question.strip():
        raise ValueError("question is empty: ask a non-empty question")
    explicit = is_explicit_checkpoint(resolve_checkpoint(args.model))
    if explicit and args.logit_lens:
        raise ValueError("--logit-lens reads latent tokens: an explicit agent has none")
    if explicit:  # its thoughts are text: --decode changes nothing
        model = ExplicitAgent.from_pretrained(
            args.model, device=args.device, trust_remote_code=args.trust_remote_code,
            **dtype_kwargs(args.dtype),
        )  # fmt: skip
        kwargs = {"max_turns": args.max_steps}
    else:
        model = load_model(args.model, args.device, args.dtype, args.trust_remote_code)
        kwargs = {"max_steps": args.max_steps, "decode": args.decode, "logit_lens": args.logit_lens}
    store = load_index(args.index, model)
    if args.extractive:
        model.config.extractive_answers = True
    res = model.run(args.question, store, top_k=args.top_k, **kwargs)
    if args.json:
        print_json(res)
    else:
        print_result(res, decoded=args.decode and not explicit)
    if str(args.model) in DEMO_CHECKPOINTS:
        from ..demo.out_of_world import out_of_world_note

        note = out_of_world_note(args.question, [d for s in res.steps for d in s.docs])
        if note:
            print(note, file=sys.stderr)
    return 0


THOUGHTS_NOTE = (
    "(thoughts and subqueries: the latent steps read back as text by the LLM through a small "
    "projector, a view of what each step was about, not the model's reasoning word for word)"
)


def print_result(res, decoded: bool = False) -> None:  # noqa: ANN001 - LatentRAGResult
    """Print a result for people: steps, documents, answer, timings and counts (``decoded``:
    its thoughts were decoded from latent tokens, which a note says)."""
    if decoded:
        print(THOUGHTS_NOTE)
    for s in res.steps:
        head = f"step {s.index}: {s.action}" + (
            " (forced: step limit or context budget)" if s.forced else ""
        )
        print(head)
        if s.thought is not None:
            print(f"  thought:  {s.thought}")
        if s.subquery is not None:
            print(f"  subquery: {s.subquery}")
        for rank, d in enumerate(s.docs, 1):
            print(f"  [{rank}] {d.id}  {d.score:.3f}  {d.title}")
        if s.logit_lens:
            for kind, rows in s.logit_lens.items():
                print(f"  logit lens {kind}: " + " | ".join(",".join(r) for r in rows))
    print(f"answer: {res.answer}")
    t = res.timings_ms
    print(
        f"time: {t.total:.0f} ms (prefill {t.prefill:.0f}, reasoning {t.reasoning:.0f}, "
        f"retrieval {t.retrieval:.0f}, answer {t.answer:.0f}, decode {t.decode:.0f}); "
        f"{res.forward_passes} forward passes, {res.input_tokens} input / "
        f"{res.output_tokens} output tokens"
    )

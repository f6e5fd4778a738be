"""``latentrag init``: build an untrained LatentRAG model from a base LLM and a retriever."""

from __future__ import annotations

import argparse

RANDOM_PREFIX = "random:"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "init",
        help="Create an untrained LatentRAG model from a base LLM and a retriever.",
        description=(
            "Add the control tokens to a causal LM, create the projectors and the retriever "
            "towers, and save an untrained LatentRAG checkpoint. Use `random:SHAPE` (e.g. "
            "random:tiny, random:qwen2.5-0.5b) for a randomly initialised LLM of a named shape "
            "with an offline tokenizer: no hub needed, but its answers are noise until trained."
        ),
    )
    p.add_argument("out", metavar="OUT", help="Output checkpoint directory.")
    p.add_argument("--base-model", required=True, help="Hub id, local path, or random:SHAPE.")
    p.add_argument(
        "--retriever",
        default="sentence-transformers/all-MiniLM-L6-v2",
        help="Retriever hub id or path (default: all-MiniLM-L6-v2, offline via [demo]).",
    )
    p.add_argument("--n-think", type=int, default=4, help="Thought slots per step (default 4).")
    p.add_argument("--n-query", type=int, default=16, help="Subquery slots per step (default 16).")
    p.add_argument("--top-k", type=int, default=3, help="Documents per step (default 3).")
    p.add_argument("--max-steps", type=int, default=4, help="Most retrieval steps (default 4).")
    p.add_argument("--seed", type=int, default=0, help="Seed for new weights (default 0).")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="Allow custom model code from the hub."
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="Replace OUT if it is a checkpoint (other non-empty directories are never deleted).",
    )
    p.add_argument(
        "--json", action="store_true", help="Print the path, kind and saved config as JSON."
    )
    p.add_argument(
        "--explicit",
        action="store_true",
        help="Create an explicit (Search-R1-protocol) baseline agent checkpoint instead, for "
        "`latentrag eval --baselines explicit:OUT` and the trainer's explicit SFT mode "
        "(--top-k and --max-steps set its top-k and max turns).",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import LatentRAGError
    from ..model_zoo import build_llm, build_tokenizer

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise LatentRAGError(f"{out} exists and is not empty (use --force to overwrite)")
    explicit = getattr(args, "explicit", False)
    if explicit:
        from ..baselines.explicit import ExplicitAgent as Made
        from ..baselines.explicit_config import ExplicitConfig as Config

        settings = dict(top_k=args.top_k, max_turns=args.max_steps)
    else:
        from ..config import LatentRAGConfig as Config
        from ..model import LatentRAG as Made

        settings = dict(
            n_think=args.n_think, n_query=args.n_query, top_k=args.top_k,
            max_steps=args.max_steps,
        )  # fmt: skip
    settings["trust_remote_code"] = args.trust_remote_code
    Config(base_model="-", **settings)  # bad settings fail before any model is built
    base: object = args.base_model
    tok = None
    if args.base_model.startswith(RANDOM_PREFIX):
        tok = build_tokenizer()
        base = build_llm(args.base_model[len(RANDOM_PREFIX) :], vocab_size=len(tok), seed=args.seed)
        base.config.name_or_path = args.base_model
    seed = {} if explicit else {"seed": args.seed}  # new projector weights
    made = Made.init(base, args.retriever, tokenizer=tok, device="cpu", **seed, **settings)
    made.save_pretrained(out)
    _report(args, out, "explicit" if explicit else "latentrag", made.config.model_dump(mode="json"))
    return 0


def _report(args: argparse.Namespace, out: object, kind: str, config: dict) -> None:
    if args.json:
        from .common import print_json

        print_json({"path": str(out), "kind": kind, "config": config})
        return
    what = "an explicit agent" if kind == "explicit" else "an untrained LatentRAG model"
    print(f"saved {what} to {out} (base {args.base_model}, retriever {config['retriever']})")

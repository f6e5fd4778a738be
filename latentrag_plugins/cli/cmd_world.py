"""``latentrag world``: generate a seeded fictional multi-hop QA world (corpus, questions,
teacher trajectories) for training small demo models and for tests."""

from __future__ import annotations

import argparse
import json
import sys


def _default_search() -> str:
    try:
        from ..world.search import minilm_available

        return "minilm" if minilm_available() else "lexical"
    except ImportError:
        return "lexical"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``world`` sub-command."""
    p = subparsers.add_parser(
        "world",
        help="Generate a fictional multi-hop QA world (corpus, questions, trajectories).",
        description=(
            "Generate a seeded, self-consistent fictional world: corpus.jsonl, "
            "questions_{train,dev,test}.jsonl, trajectories.jsonl, entities.jsonl and world.json "
            "(a summary of counts). The same seed gives byte-identical files."
        ),
    )
    p.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    p.add_argument("--out", required=True, help="Output directory (created if missing).")
    p.add_argument(
        "--size",
        choices=("small", "default"),
        default="default",
        help="small: a few hundred passages (for tests); default: a few thousand.",
    )
    p.add_argument(
        "--search",
        choices=("lexical", "minilm"),
        default=None,
        help="Retriever the oracle uses for trajectories (default: minilm if available, "
        "else lexical BM25).",
    )
    p.add_argument("--json", action="store_true", help="Print the summary of counts as JSON.")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Generate the world and write its files; returns the exit code."""
    from ..errors import LatentRAGError
    from ..world import build_dataset, refusal, write_dataset
    from .common import check_output_dir

    check_output_dir(args.out, refusal)
    search = args.search or _default_search()
    make_search = None
    if search == "minilm":
        from ..world.search import minilm_search_fn

        make_search = minilm_search_fn
    try:
        ds = build_dataset(
            args.seed,
            args.size,
            make_search=make_search,
            search_name=search,
            progress=not args.json and sys.stderr.isatty(),
        )
    except NotImplementedError as exc:
        raise LatentRAGError(f"--search {search} is not available yet ({exc})") from None
    summary = write_dataset(ds, args.out)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        q = summary["questions"]
        t = summary["trajectories"]
        print(
            f"world seed={args.seed} size={args.size}: {summary['passages']} passages, "
            f"questions train/dev/test = {q['train']['total']}/{q['dev']['total']}/"
            f"{q['test']['total']}, trajectories kept {t['kept']} dropped {t['dropped']} "
            f"-> {args.out}"
        )
    return 0

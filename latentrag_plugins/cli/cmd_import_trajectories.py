"""``latentrag import-trajectories``: convert Search-R1 / AutoRefine transcripts to trajectories."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "import-trajectories",
        help="Convert explicit-agent transcripts (Search-R1, AutoRefine) into trajectories.",
        description=(
            "Read JSONL lines with question, answers (or golden_answers), optional id, and "
            "transcript (<think>, <search>, <information>, <answer> blocks; AutoRefine adds "
            "<refine>, merged into the next thought). Keep the trajectories whose answer "
            "matches a gold answer (exact match, SQuAD normalisation) and write them in the "
            "trajectory schema (see docs/training.md)."
        ),
    )
    p.add_argument("input", metavar="IN.jsonl", help="Transcripts, one JSON object per line.")
    p.add_argument("output", metavar="OUT.jsonl", help="Trajectory file to write.")
    p.add_argument(
        "--format",
        choices=["search-r1", "autorefine"],
        default="search-r1",
        help="Transcript format (default search-r1).",
    )
    p.add_argument(
        "--keep-wrong", action="store_true", help="Also keep trajectories with a wrong answer."
    )
    p.add_argument("--json", action="store_true", help="Print the counts as JSON.")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..training.transcripts import import_transcripts
    from .common import check_output_files, print_json

    check_output_files(args.output, inputs=[args.input])
    stats = import_transcripts(args.input, args.output, args.format, keep_wrong=args.keep_wrong)
    if args.json:
        print_json(stats.as_dict())
        return 0
    why = ", ".join(f"{k}: {v}" for k, v in sorted(stats.reasons.items()))
    print(
        f"kept {stats.kept}, dropped {stats.dropped}"
        + (f" ({why})" if why else "")
        + f"; wrote {args.output}"
    )
    return 0

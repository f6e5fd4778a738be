"""``latentrag index``: embed a corpus with the document tower into a FAISS index directory."""

from __future__ import annotations

import argparse
import sys

from .common import add_device_arg, add_trust_arg, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "index",
        help="Build a FAISS index from a JSONL corpus.",
        description=(
            "Embed a corpus ({id, contents} or {id, title, text} per line) with the frozen "
            "document tower of a model (--model) or a retriever (--retriever), and save a FAISS "
            "index directory with a manifest."
        ),
    )
    p.add_argument("corpus", metavar="CORPUS.jsonl", help="Corpus JSONL file.")
    p.add_argument("out", metavar="OUT_DIR", help="Index directory to write.")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model",
        metavar="DIR",
        help="LatentRAG or explicit agent checkpoint whose document tower to use (`demo`, "
        "`demo-explicit`: the shipped demo checkpoints).",
    )
    src.add_argument("--retriever", help="Retriever id or path (default: all-MiniLM-L6-v2).")
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="Embedding batch size (default 64)."
    )
    p.add_argument("--json", action="store_true", help="Print the manifest as JSON.")
    add_device_arg(p)
    add_trust_arg(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..checkpoint_files import load_document_tower, retriever_tower
    from ..store.corpus import iter_corpus
    from ..store.faiss_store import FaissStore, refusal
    from .common import check_output_dir, print_json

    check_output_dir(args.out, refusal)
    if args.model:
        tower = load_document_tower(
            args.model, device=args.device, trust_remote_code=args.trust_remote_code
        )
    else:
        tower = retriever_tower(
            args.retriever or "sentence-transformers/all-MiniLM-L6-v2",
            device=args.device,
            trust_remote_code=args.trust_remote_code,
        )
    store = FaissStore.build(
        tower,
        iter_corpus(args.corpus),
        batch_size=args.batch_size,
        show_progress=sys.stderr.isatty(),
    )
    store.save(args.out)
    if args.json:
        print_json(store.manifest())
    else:
        print(
            f"indexed {len(store)} documents with {tower.encoder_id} ({store.dim}-dim) into {args.out}"
        )
    return 0

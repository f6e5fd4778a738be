"""``latentrag prepare``: reference subquery embeddings and pseudo-relevant documents for training."""

from __future__ import annotations

import argparse
import sys

from .common import add_device_arg, add_trust_arg, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "prepare",
        help="Embed trajectory subqueries and retrieve their pseudo-relevant documents.",
        description=(
            "Embed every natural-language subquery of a trajectory file with the model's frozen "
            "document tower, retrieve its top-N documents from the index, and save their ids "
            "and embeddings with the trajectories into OUT (reusable by any training run)."
        ),
    )
    p.add_argument("trajectories", metavar="TRAJ.jsonl", help="Trajectory file.")
    p.add_argument("out", metavar="OUT", help="Prepared-data directory to write.")
    p.add_argument("--model", required=True, metavar="DIR", help="LatentRAG checkpoint.")
    p.add_argument("--index", required=True, metavar="DIR", help="FAISS index directory.")
    p.add_argument(
        "--top-n", type=int, default=16, help="Pseudo-relevant documents per subquery (16)."
    )
    p.add_argument("--beta", type=float, default=None, help="L_ret temperature (default 0.03).")
    p.add_argument(
        "--calibrate-beta",
        action="store_true",
        help="Choose beta so the average top-3 probability mass is 0.5.",
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="Embedding batch size (64).")
    p.add_argument("--json", action="store_true", help="Print the manifest as JSON.")
    add_device_arg(p)
    add_trust_arg(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..checkpoint_files import load_document_tower
    from ..store.faiss_store import FaissStore
    from ..training.preparation import prepare
    from ..training.prepared import refusal
    from ..training.trajectories import read_trajectories
    from .common import check_output_dir, print_json

    if args.beta is not None and args.calibrate_beta:
        raise ValueError("pass either --beta or --calibrate-beta, not both")
    check_output_dir(args.out, refusal)
    trajs = read_trajectories(args.trajectories)
    tower = load_document_tower(
        args.model, device=args.device, trust_remote_code=args.trust_remote_code
    )
    store = FaissStore.load(args.index, encoder_id=tower.encoder_id, dim=tower.dim)
    data = prepare(
        tower,
        store,
        trajs,
        top_n=args.top_n,
        beta=args.beta,
        calibrate=args.calibrate_beta,
        batch_size=args.batch_size,
        show_progress=sys.stderr.isatty(),
        source=str(args.trajectories),
    )
    data.save(args.out)
    man = data.manifest()
    if args.json:
        print_json(man)
        return 0
    mass = man.get("top3_mass")
    print(
        f"prepared {man['trajectories']} trajectories, {man['subqueries']} subqueries, "
        f"{man['documents']} documents; beta={man['beta']:.4g}"
        + (f" (top-3 mass {mass:.3f})" if mass is not None else "")
        + f"; wrote {args.out}"
    )
    return 0

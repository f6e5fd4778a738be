"""``latentrag serve``: serve a model over HTTP on Ray Serve, replicas batching their requests."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import add_device_arg, add_dtype_arg, add_model_arg, positive_int

if TYPE_CHECKING:
    from ..serve.config import ServeConfig

# Defaults shown in --help; ServeConfig holds them (tests check that they agree).
MAX_BATCH = 32


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="Serve a model over HTTP on Ray Serve (needs the [serve] extra).",
        description=(
            "Start the LatentRAG service on Ray Serve: replicas of the model, each batching its "
            "concurrent requests, searching a FAISS index or your own store. HTTP API: POST "
            "/v1/ask, POST /v1/ask/stream (NDJSON), GET /health (see docs/serving.md). Runs on "
            "a new local Ray instance, or on the cluster that --address or RAY_ADDRESS names, "
            "until interrupted."
        ),
    )
    add_model_arg(p)
    store = p.add_mutually_exclusive_group(required=True)
    store.add_argument("--index", metavar="DIR", help="FAISS index directory (latentrag index).")
    store.add_argument(
        "--store-factory",
        metavar="MODULE:FUNCTION",
        help="A function returning the store to search: a FaissStore, a LangChain VectorStore "
        "or a LlamaIndex VectorStoreIndex; called once per replica, with the model if it takes "
        "an argument. The module must import on every node (here: from the working directory).",
    )
    p.add_argument(
        "--replicas", type=positive_int, default=1, help="Replicas of the model (default 1)."
    )
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=None,
        help=f"Most requests in flight per replica, sharing forward passes (default {MAX_BATCH}).",
    )
    p.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
    p.add_argument("--port", type=_port, default=8000, help="Port to listen on (default 8000).")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs per replica (default 1).")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per replica (default 0).")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to run on (default: RAY_ADDRESS, else a new local Ray instance).",
    )
    add_device_arg(p)
    add_dtype_arg(p)
    p.set_defaults(func=run)
    return p


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, not {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from ..serve.config import ServeConfig

    given = {
        "model": _absolute(args.model), "index": _absolute(args.index),
        "store_factory": args.store_factory,
        "replicas": args.replicas, "max_batch": args.max_batch, "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus, "device": args.device, "dtype": args.dtype,
        "trust_remote_code": args.trust_remote_code,
    }  # fmt: skip
    config = ServeConfig(**{k: v for k, v in given.items() if v is not None})
    check_sources(config)
    from ..serve.launcher import connect, launch, stop

    print(f"starting {config.replicas} replica(s) of {config.model} on Ray", file=sys.stderr)
    on_term = signal.getsignal(signal.SIGTERM)
    try:
        connect(config, args.address)
        _restore_sigterm(on_term)
        url = launch(config, host=args.host, port=args.port, address=args.address)
        print(
            f"serving {config.model} over {config.store_source()} at {url} "
            "(POST /v1/ask, POST /v1/ask/stream, GET /health); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        threading.Event().wait()  # until interrupted
    finally:
        stop()
    return 0


def _absolute(path: str | None) -> str | None:
    """An existing local path made absolute (replicas run elsewhere); others as given."""
    return str(Path(path).resolve()) if path is not None and Path(path).exists() else path


def _restore_sigterm(handler: Any) -> None:
    """Put back the SIGTERM handler that Ray replaced (``latentrag``'s: a termination stops the
    service as an interrupt does)."""
    if threading.current_thread() is threading.main_thread() and handler is not None:
        signal.signal(signal.SIGTERM, handler)


def check_sources(config: ServeConfig) -> None:
    """Before starting Ray: the checkpoint, the index directory and the factory exist.

    Raises:
        ValueError: One of them is missing (the message names it).
        ImportError: The factory's module does not import.
    """
    from ..demo.assets import resolve_checkpoint
    from ..extras import require

    require("ray.serve", "serve", "latentrag serve")
    model = resolve_checkpoint(config.model)
    if not (model / "config.json").is_file():
        raise ValueError(f"{config.model}: not a LatentRAG checkpoint directory (no config.json)")
    if config.index is not None and not (Path(config.index) / "manifest.json").is_file():
        raise ValueError(
            f"{config.index}: not a FAISS index directory (no manifest.json); build one with "
            "`latentrag index`"
        )
    if config.store_factory is not None:
        import os

        from ..serve.stores import resolve_factory

        if os.getcwd() not in sys.path:  # as on the replicas (launch adds it there)
            sys.path.insert(0, os.getcwd())
        resolve_factory(config.store_factory)

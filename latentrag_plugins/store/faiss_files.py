"""The files of a saved FaissStore: their names, and reading the manifest and the index with checks
that name the file at fault.

A saved store is a directory::

    index.faiss    FAISS IndexFlatIP (always the CPU index)
    docs.jsonl     one {"id", "contents"[, "metadata"]} per vector, in index order
    manifest.json  encoder_id, dim, metric, normalized, count, versions
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..extras import require
from ..io_utils import readable_dir, replaceable_dir

FORMAT = "latentrag-faiss-store"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
DOCS_FILE = "docs.jsonl"
MANIFEST_FILE = "manifest.json"
METRIC = "inner_product"


def import_faiss() -> Any:
    """Import faiss, or raise an ImportError naming the extra that installs it."""
    return require("faiss", "faiss", "the embedded FAISS store")


def refusal(path: str | os.PathLike[str]) -> str | None:
    """Why :meth:`FaissStore.save` would refuse ``path`` (None: it may write there): a file, or
    a non-empty directory that is not a FaissStore's. Check it before building a store."""
    return replaceable_dir(
        path,
        manifest=MANIFEST_FILE,
        fmt=FORMAT,
        owned=(INDEX_FILE, DOCS_FILE, MANIFEST_FILE),
        what="FaissStore",
    )


def read_manifest(path: str | os.PathLike[str]) -> tuple[Path, str, int, int]:
    """Read and check a store directory's manifest.

    Returns:
        ``(root, encoder_id, dim, count)``: the directory and what its manifest says.

    Raises:
        StoreError: A missing directory, a missing or corrupt manifest, another format, a newer
            format version or another metric (the message names the file).
    """
    root = readable_dir(path)
    if root.is_file():
        raise StoreError(
            f"{root} is a file, not an index directory: build an index from a corpus with "
            f"`latentrag index {root.name} INDEX_DIR` (or FaissStore.build), then pass INDEX_DIR"
        )
    if not root.is_dir():
        raise StoreError(f"{root}: store directory not found")
    mpath = root / MANIFEST_FILE
    try:
        man = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{mpath}: missing store manifest") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{mpath}: corrupt store manifest ({exc})") from None
    if isinstance(man, dict) and man.get("format", FORMAT) != FORMAT:
        raise StoreError(f"{root}: is a {man['format']} directory, not a {FORMAT}")
    try:
        if int(man["format_version"]) > FORMAT_VERSION:
            raise StoreError(
                f"{mpath}: format version {man['format_version']} is newer than this "
                f"library supports ({FORMAT_VERSION}); upgrade latentrag-plugins"
            )
        encoder_id, dim, count = str(man["encoder_id"]), int(man["dim"]), int(man["count"])
        metric = man.get("metric", METRIC)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{mpath}: corrupt store manifest (bad or missing {exc})") from None
    if metric != METRIC:
        raise StoreError(f"{mpath}: not a {FORMAT} manifest with metric {METRIC!r}")
    return root, encoder_id, dim, count


def read_index(root: Path, dim: int, count: int) -> Any:
    """Read ``root``'s FAISS index and check it against the manifest's ``dim`` and ``count``.

    Raises:
        StoreError: A missing or corrupt index file, another metric, or another size.
    """
    faiss = import_faiss()
    ipath = root / INDEX_FILE
    if not ipath.is_file():
        raise StoreError(f"{ipath}: missing index file")
    try:
        index = faiss.read_index(str(ipath))
    except RuntimeError as exc:
        raise StoreError(f"{ipath}: corrupt index file ({str(exc).splitlines()[0]})") from None
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise StoreError(f"{ipath}: index does not use the inner-product metric")
    if index.d != dim or index.ntotal != count:
        raise StoreError(
            f"{ipath}: index holds {index.ntotal} vectors of dim {index.d}, but {MANIFEST_FILE} "
            f"says {count} of dim {dim}"
        )
    return index

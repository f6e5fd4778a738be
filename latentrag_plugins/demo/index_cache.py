"""A FAISS index of a corpus, built once with a model's document tower and cached on disk."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .. import threads
from ..errors import StoreError

UNUSED_DAYS = 30  # a cached index unused this long is deleted when another one is built
_ENTRY = re.compile(r"index-[0-9a-f]{16}-[0-9a-f]{12}")  # a cached index's name, nothing else
_TRASH = re.compile(r"\.trash-index-[0-9a-f]{16}-[0-9a-f]{12}-\d+")  # an interrupted delete
_PARTIAL = re.compile(r"\.index-[0-9a-f]{16}-[0-9a-f]{12}\.[^/]+")  # an interrupted build
PARTIAL_DAYS = 1  # a build's scratch directory this old was left by a build that stopped
BATCH = 128  # texts per pass when embedding (length-sorted batches; docs/usage.md)
BUILD_TIME = (  # measured on 2 AMD Zen 4 cores: docs/usage.md
    "the demo corpus takes about 15 s on 2 idle CPU cores with native bfloat16, and a few "
    "minutes on a busy machine or in float32"
)


def cache_dir() -> Path:
    """``$LATENTRAG_CACHE``, else ``$XDG_CACHE_HOME/latentrag``, else ``~/.cache/latentrag``."""
    if os.environ.get("LATENTRAG_CACHE"):
        return Path(os.environ["LATENTRAG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "latentrag"


def cached_index(model: Any, corpus: str | os.PathLike[str]) -> Any:
    """Load the cached index of ``corpus`` for ``model``'s document tower, building it if needed.

    The cache key is the corpus' content hash and a fingerprint of the document tower (encoder
    id, pooling, normalisation, max length, a sample of its weights and their dtype) and of the
    library version, so a changed corpus, retriever or store format gets its own index. Building
    one deletes the cached indexes not used for :data:`UNUSED_DAYS` days.
    """
    from ..store.corpus import iter_corpus
    from ..store.faiss_store import FaissStore

    digest = hashlib.sha256(Path(corpus).read_bytes()).hexdigest()[:16]
    path = cache_dir() / f"index-{digest}-{_tower_fingerprint(model.doc_tower)}"
    if (path / "manifest.json").is_file():
        _mark_used(path)  # before reading: another process's pruning then leaves it alone
        try:
            return FaissStore.load(path, encoder_id=model.encoder_id, dim=model.dim)
        except StoreError:
            pass  # a corrupt cache: rebuild it
    print(  # once per corpus and tower; without a terminal no progress bar shows it
        f"building the index of {Path(corpus).name} once (cached in {path}; {BUILD_TIME})",
        file=sys.stderr,
        flush=True,
    )
    with threads.using(threads.build_threads()):
        store = FaissStore.build(
            model, iter_corpus(corpus), batch_size=BATCH, show_progress=sys.stderr.isatty()
        )
    store.save(path)
    _prune(keep=path)
    return store


def _mark_used(path: Path) -> None:
    """Record a use of a cached index (its directory's modification time)."""
    with contextlib.suppress(OSError):  # a read-only cache still serves
        os.utime(path)


def _prune(keep: Path) -> None:
    """Delete the cached indexes other than ``keep`` unused for :data:`UNUSED_DAYS` days, and
    what interrupted deletes and builds left (only directories named as this cache names
    them)."""
    now = time.time()
    for entry in keep.parent.iterdir():
        if entry.is_symlink():
            continue
        if _TRASH.fullmatch(entry.name) or (
            _PARTIAL.fullmatch(entry.name) and _older(entry, now - PARTIAL_DAYS * 86400)
        ):
            shutil.rmtree(entry, ignore_errors=True)
            continue
        if entry == keep or not _ENTRY.fullmatch(entry.name):
            continue
        if not _older(entry, now - UNUSED_DAYS * 86400):
            continue
        trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}")
        try:
            entry.rename(trash)  # gone at once for readers, even if the delete stops halfway
        except OSError:  # removed meanwhile, or not ours to remove
            continue
        shutil.rmtree(trash, ignore_errors=True)


def _older(entry: Path, cutoff: float) -> bool:
    """Whether ``entry`` is a directory last modified before ``cutoff`` (False if it is gone)."""
    try:
        return entry.is_dir() and entry.stat().st_mtime < cutoff
    except OSError:
        return False


def _tower_fingerprint(tower: Any) -> str:
    """A short hash of what a document tower's embeddings depend on (its weights' dtype too)."""
    import torch

    from .._version import __version__

    h = hashlib.sha256()
    settings = (__version__, tower.encoder_id, tower.pooling, tower.normalize, tower.max_length)
    h.update(repr(settings).encode())
    with torch.no_grad():
        for p in tower.encoder.parameters():  # 64 evenly spaced values of every tensor
            flat = p.detach().flatten()
            h.update(str(p.dtype).encode())
            h.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]

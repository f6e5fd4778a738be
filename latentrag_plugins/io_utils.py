"""Atomic file writes and JSONL reading with line-numbered errors."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from .errors import CheckpointError, LatentRAGError


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, owned: Collection[str] | None = None
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds.

    Works for files and for directories (the block creates what it needs at the yielded path).
    A directory replaces the whole of an existing one: with ``owned`` (the entry names a save
    writes), an existing directory holding anything else is refused instead, before any work.
    """
    target = Path(os.path.abspath(path))
    if _holds_cwd(target):  # it would be swapped away under the process (and the user's shell)
        raise LatentRAGError(f"{path}: is the current directory or holds it; write elsewhere")
    restore_interrupted(target)
    _sweep_stale(target)
    if owned is not None and (foreign := _foreign(target, owned)) is not None:
        raise LatentRAGError(
            f"{target}: holds {foreign}, which a save would delete; refusing (save into a new or "
            "checkpoint-only directory)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / "tmp"
    try:
        yield tmp
        if target.is_dir() and tmp.is_dir():
            old = _old_name(target)
            if old.exists():
                shutil.rmtree(old)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        elif tmp.exists():
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def replaceable_dir(
    path: str | os.PathLike[str],
    *,
    manifest: str,
    fmt: str | None,
    owned: Collection[str],
    what: str,
) -> str | None:
    """Why a save of ``what`` may not replace ``path`` (None: it may): a file, or a non-empty
    directory that is not ``what``'s: its ``manifest`` is not a JSON object whose ``format`` is
    ``fmt`` (None: any object), or it holds entries outside ``owned``."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        return f"{target}: exists and is not a directory"
    if _holds_cwd(target):
        return f"{target}: is the current directory or holds it; write elsewhere"
    if not target.is_dir() or not any(target.iterdir()):
        return None
    try:
        data = json.loads((target / manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    found = data.get("format") if isinstance(data, dict) else None
    if not isinstance(data, dict) or (fmt is not None and found != fmt):
        if isinstance(found, str):
            return f"{target}: is a {found} directory, not a {what}; refusing to overwrite it"
        return f"{target}: not empty and not a {what}; refusing to overwrite it"
    if (foreign := _foreign(target, owned)) is not None:
        return (
            f"{target}: holds {foreign} besides a {what}, which a save would delete; refusing to "
            "overwrite it"
        )
    return None


def _holds_cwd(path: Path) -> bool:
    cwd, here = Path.cwd(), Path(os.path.abspath(path))
    return here == cwd or here in cwd.parents


def _foreign(target: Path, owned: Collection[str]) -> str | None:
    """The first few entries of directory ``target`` outside ``owned``, or None."""
    if not target.is_dir():
        return None
    foreign = sorted(e.name for e in target.iterdir() if e.name not in owned)
    if not foreign:
        return None
    return ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")


_STALE_S = 24 * 3600
_SCRATCH = re.compile(r"[a-z0-9_]{8}")  # tempfile.mkdtemp's random part


def _sweep_stale(target: Path) -> None:
    """Remove the scratch directories of saves to ``target`` that were killed (SIGKILL, power
    loss) more than a day ago; a save under way now is younger."""
    prefix = f".{target.name}."
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            name = entry.name
            if not (name.startswith(prefix) and _SCRATCH.fullmatch(name[len(prefix) :])):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir() and time.time() - entry.stat().st_mtime > _STALE_S:
                    shutil.rmtree(entry, ignore_errors=True)


def _old_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def readable_dir(path: str | os.PathLike[str]) -> Path:
    """``path``, or the copy :func:`atomic_path` had moved aside when the process died between
    its two renames (read in place: readers never write, and a save may be under way)."""
    target = Path(path)
    old = _old_name(target)
    return old if not target.exists() and old.is_dir() else target


def restore_interrupted(path: str | os.PathLike[str]) -> None:
    """Put back a directory that :func:`atomic_path` had moved aside when the process died
    between its two renames (the only moment no version is at ``path``)."""
    target = Path(path)
    old = _old_name(target)
    if not target.exists() and old.is_dir():
        old.rename(target)


def check_local_source(name: str, what: str) -> None:
    """Raise CheckpointError if ``name`` is written as a local path (absolute, ``./``, ``~``) that
    does not exist: it is then no hub id either, and the hub's own error would say otherwise."""
    local = os.path.isabs(name) or name.startswith((".", "~"))
    if local and not Path(name).expanduser().exists():
        raise CheckpointError(f"{what} {name!r}: no such local directory (and not a hub id)")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON Lines to ``path`` atomically."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file.

    Raises:
        LatentRAGError: If the file is missing or a line is not a JSON object; the message names
            the file and the 1-based line number.
    """
    p = Path(path)
    if p.is_dir():
        raise LatentRAGError(f"{p}: is a directory; give a JSONL file")
    if not p.is_file():
        raise LatentRAGError(f"{p}: file not found")
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a BOM is fine
            except UnicodeDecodeError:
                raise LatentRAGError(f"{p}:{lineno}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LatentRAGError(f"{p}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise LatentRAGError(f"{p}:{lineno}: expected a JSON object")
            yield lineno, obj

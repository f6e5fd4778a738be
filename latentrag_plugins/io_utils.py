"""Atomic file writes and JSONL reading with line-numbered errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from .errors import LatentRAGError


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, owned: Collection[str] | None = None
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds.

    Works for files and for directories (the block creates what it needs at the yielded path).
    A directory replaces the whole of an existing one: with ``owned`` (the entry names a save
    writes), an existing directory holding anything else is refused instead, before any work.
    """
    target = Path(path)
    restore_interrupted(target)
    foreign: list[str] = []
    if owned is not None and target.is_dir():
        foreign = sorted(e.name for e in target.iterdir() if e.name not in owned)
    if foreign:
        raise LatentRAGError(
            f"{target}: holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, "
            "which a save would delete; refusing (save into a new or checkpoint-only directory)"
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
    if not p.is_file():
        raise LatentRAGError(f"{p}: file not found")
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
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

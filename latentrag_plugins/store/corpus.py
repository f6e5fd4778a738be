"""Reading document corpora from JSON Lines files.

Two line formats are accepted (DESIGN §4, "Files"):

* ``{"id": ..., "contents": "Title\\nbody"}``: Search-R1 / FlashRAG style, the first line of
  ``contents`` is the title;
* ``{"id": ..., "title": "...", "text": "..."}``: title and body apart.

Either way a document's ``text`` is ``"Title\\nbody"`` (just the body when the title is empty).
Integer ids are turned into strings. Other fields are kept as ``metadata``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LatentRAGError, StoreError
from ..io_utils import read_jsonl

_TEXT_KEYS = ("id", "contents", "title", "text")


@dataclass(frozen=True, slots=True)
class CorpusDoc:
    """One corpus document.

    Attributes:
        id: Document id, unique in the corpus.
        text: Document text, title on the first line.
        metadata: The line's other fields (anything but id, contents, title, text).
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _parse_line(obj: dict[str, Any], where: str) -> CorpusDoc:
    """Turn one JSON object into a CorpusDoc; ``where`` is ``"file:line"`` for errors."""
    if "id" not in obj or obj["id"] is None:
        raise LatentRAGError(f"{where}: missing 'id'")
    raw_id = obj["id"]
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise LatentRAGError(
            f"{where}: 'id' must be a string or an integer, got {type(raw_id).__name__}"
        )
    doc_id = str(raw_id)
    if not doc_id.strip():
        raise LatentRAGError(f"{where}: empty 'id'")

    if "contents" in obj:
        contents = obj["contents"]
        if not isinstance(contents, str):
            raise LatentRAGError(f"{where}: 'contents' must be a string")
        text = contents
    elif "text" in obj:
        body, title = obj["text"], obj.get("title")
        if not isinstance(body, str):
            raise LatentRAGError(f"{where}: 'text' must be a string")
        if title is not None and not isinstance(title, str):
            raise LatentRAGError(f"{where}: 'title' must be a string")
        text = f"{title.strip()}\n{body}" if title and title.strip() else body
    else:
        raise LatentRAGError(
            f"{where}: missing text: expected 'contents' or 'title' and 'text' "
            f"(found keys: {sorted(obj)})"
        )
    if not text.strip():
        raise LatentRAGError(f"{where}: document {doc_id!r} has empty text")
    meta = {k: v for k, v in obj.items() if k not in _TEXT_KEYS}
    return CorpusDoc(id=doc_id, text=text, metadata=meta)


def iter_corpus(path: str | os.PathLike[str]) -> Iterator[CorpusDoc]:
    """Stream the documents of a JSONL corpus, checking each line.

    Blank lines are skipped. Ids are checked for duplicates as the file is read.

    Args:
        path: The corpus file.

    Yields:
        One CorpusDoc per non-blank line, in file order.

    Raises:
        LatentRAGError: On a missing file, bad JSON, a missing id or text, a duplicate id, or an
            empty corpus; the message names the file and the 1-based line number.
    """
    p = Path(path)
    first_line: dict[str, int] = {}  # id -> line where it was first seen
    for lineno, obj in read_jsonl(p):
        doc = _parse_line(obj, f"{p}:{lineno}")
        prev = first_line.setdefault(doc.id, lineno)
        if prev != lineno:
            raise LatentRAGError(
                f"{p}:{lineno}: duplicate id {doc.id!r} (first seen on line {prev})"
            )
        yield doc
    if not first_line:
        raise LatentRAGError(f"{p}: empty corpus (no documents)")


def read_corpus(path: str | os.PathLike[str]) -> list[CorpusDoc]:
    """Read a whole JSONL corpus into memory.

    Args:
        path: The corpus file.

    Returns:
        The documents, in file order (at least one).

    Raises:
        LatentRAGError: As :func:`iter_corpus`.
    """
    return list(iter_corpus(path))


def write_docs_jsonl(
    path: Path,
    ids: Sequence[str],
    texts: Sequence[str],
    metadata: Sequence[dict[str, Any]] | None = None,
) -> None:
    """Write a store's docs.jsonl: one ``{"id", "contents"[, "metadata"]}`` line per document."""
    with path.open("w", encoding="utf-8") as fh:
        for i, (doc_id, text) in enumerate(zip(ids, texts, strict=True)):
            row: dict[str, Any] = {"id": doc_id, "contents": text}
            if metadata is not None and metadata[i]:
                row["metadata"] = metadata[i]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_docs_jsonl(
    path: Path, count: int
) -> tuple[list[str], list[str], list[dict[str, Any]] | None]:
    """Read a store's docs.jsonl (fast, trusting our own format).

    Args:
        path: The file.
        count: The number of documents the manifest promises.

    Returns:
        ``(ids, texts, metadata)``; metadata is None when no document has any.

    Raises:
        StoreError: If the file is missing, a line is corrupt, or the count differs.
    """
    if not path.is_file():
        raise StoreError(f"{path}: missing documents file")
    ids: list[str] = []
    texts: list[str] = []
    meta: list[dict[str, Any]] = []
    any_meta = False
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                row = json.loads(raw)  # (bytes: UTF-8 is checked)
                ids.append(str(row["id"]))
                if not isinstance(row["contents"], str):
                    raise TypeError("contents is not a string")
                texts.append(row["contents"])
                m = row.get("metadata") or {}
            # (ValueError covers bad JSON and bad UTF-8.)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise StoreError(f"{path}:{lineno}: corrupt document line ({exc!r})") from None
            any_meta = any_meta or bool(m)
            meta.append(m)
    if len(ids) != count:
        raise StoreError(f"{path}: has {len(ids)} documents, but the manifest says {count}")
    return ids, texts, (meta if any_meta else None)

"""Reading evaluation questions: JSONL with ``{"id", "question", "golden_answers": [...]}``.

``answers`` (list) or ``answer`` (string) are accepted for the gold answers too; an optional
integer ``hops`` field groups the metrics by hop count, and optional ``supporting_ids`` (the ids
of the passages that hold the answer's facts) add a supporting-passage recall.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..errors import LatentRAGError
from ..io_utils import read_jsonl
from ..metrics import normalize_answer
from ..runtime import check_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    """One evaluation question.

    Attributes:
        id: Question id (the line number when the file has none).
        question: The question text.
        golds: Gold answers (EM/F1 take the max over them).
        hops: Hop count, when the file gives one.
        supporting: Ids of the supporting passages, when the file gives them.
    """

    id: str
    question: str
    golds: tuple[str, ...]
    hops: int | None = None
    supporting: tuple[str, ...] = ()


def read_questions(path: str | os.PathLike[str], limit: int | None = None) -> list[Question]:
    """Read up to ``limit`` questions from a JSONL file.

    A question whose every gold answer normalises to nothing (``"A"``, ``"The"``: SQuAD
    normalisation drops articles) cannot be scored, since an empty answer would match it: it is
    skipped with a warning.

    Raises:
        LatentRAGError: On a missing file, a bad line, an empty question, a repeated id or no
            gold answers; the message names the file and line.
    """
    out: list[Question] = []
    unscorable: list[str] = []
    seen: set[str] = set()
    for lineno, obj in read_jsonl(path):
        if limit is not None and len(out) >= limit:
            break
        where = f"{path}:{lineno}"
        q = obj.get("question")
        if not isinstance(q, str) or not q.strip():
            raise LatentRAGError(f"{where}: missing or empty 'question'")
        try:
            check_text(q, "'question'")
        except ValueError as exc:
            raise LatentRAGError(f"{where}: {exc}") from None
        qid = str(obj.get("id", lineno))
        if qid in seen:
            raise LatentRAGError(f"{where}: duplicate id {qid!r}")
        seen.add(qid)
        golds = obj.get("golden_answers", obj.get("answers", obj.get("answer")))
        if isinstance(golds, str):
            golds = [golds]
        if not isinstance(golds, list) or not all(isinstance(g, str) for g in golds):
            raise LatentRAGError(f"{where}: 'golden_answers' must be a list of strings")
        if not any(g.strip() for g in golds):
            raise LatentRAGError(f"{where}: 'golden_answers' has no non-empty answer")
        golds = [g for g in golds if normalize_answer(g)]  # "The" would make "" correct
        if not golds:
            unscorable.append(where)
            continue
        hops = obj.get("hops")
        if hops is not None:
            try:
                hops = int(hops)
            except (TypeError, ValueError):
                raise LatentRAGError(f"{where}: 'hops' must be an integer") from None
        supporting = obj.get("supporting_ids") or []
        if not isinstance(supporting, list):
            raise LatentRAGError(f"{where}: 'supporting_ids' must be a list of ids")
        out.append(
            Question(
                qid,
                q.strip(),
                tuple(golds),
                hops,
                tuple(str(x) for x in supporting),
            )
        )
    if unscorable:
        log.warning(
            "skipped %d question(s) whose gold answers all normalise to nothing (articles or "
            "punctuation only), e.g. %s",
            len(unscorable),
            unscorable[0],
        )
    if not out:
        raise LatentRAGError(f"{path}: no questions")
    return out

"""Converting explicit-agent transcripts (Search-R1, AutoRefine) into trajectories.

Input lines hold ``question``, ``answers`` (or FlashRAG's ``golden_answers``), an optional ``id``
and ``transcript``: the agent's output with ``<think>``, ``<search>``, ``<information>`` and
``<answer>`` blocks (AutoRefine adds ``<refine>``). Documents inside ``<information>`` are
Search-R1's ``Doc i(Title: t) text`` entries.

Rules (paper Appendix B, "Training data construction"):

* every ``<search>`` closes a step: its thought is the text of the ``<think>`` (and, for
  AutoRefine, ``<refine>``) blocks since the previous search, its documents the next
  ``<information>`` block;
* with ``autorefine``, ``<refine>`` text is merged into the thought it precedes (the refinement of
  step t's documents opens the thought of step t+1); with ``search-r1`` it is ignored;
* the thought blocks after the last search form ``final_thought``; the first ``<answer>`` ends it;
* only trajectories whose answer matches a gold answer (exact match, SQuAD normalisation) are
  kept. Transcripts without an answer, with an empty subquery, or with a wrong answer are dropped
  and counted by reason.

If a transcript still holds the prompt (Search-R1's prompt contains example tags), parsing starts
after it: after Search-R1's instruction line (:func:`latentrag_plugins.baselines.search_r1.
strip_prompt`), after the last ``<|im_start|>assistant`` marker, or after ``Question: {question}``.

The baseline's :func:`~latentrag_plugins.baselines.search_r1.parse_transcript` reads an agent's
own output; this importer adds what training data needs: AutoRefine's ``<refine>`` blocks,
several ``<think>`` blocks merged into one thought, and the documents of each step.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import LatentRAGError
from ..io_utils import read_jsonl
from ..metrics import exact_match
from .trajectories import (
    Trajectory,
    TrajectoryDoc,
    TrajectoryError,
    TrajectoryStep,
    id_as_str,
    write_trajectories,
)

TranscriptFormat = Literal["search-r1", "autorefine"]
FORMATS: tuple[str, ...] = ("search-r1", "autorefine")

_TAG = re.compile(r"<(think|search|information|answer|refine)>(.*?)</\1>", re.DOTALL)
_DOC_HEAD = re.compile(r"Doc\s*(\d+)\s*\(\s*Title:\s*")


class TranscriptLine(BaseModel):
    """One input line of ``import-trajectories``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str | None = Field(default=None, description="Question id (default: line-N).")
    question: str = Field(description="The question.")
    answers: list[str] = Field(
        validation_alias=AliasChoices("answers", "golden_answers"), description="Gold answers."
    )
    transcript: str = Field(description="The agent's tagged output.")

    _id_str = field_validator("id", mode="before")(id_as_str)


@dataclass
class ImportStats:
    """Counts of an import: kept and dropped trajectories, and why they were dropped."""

    kept: int = 0
    dropped: int = 0
    reasons: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        """JSON-able summary."""
        return {"kept": self.kept, "dropped": self.dropped, "dropped_by_reason": dict(self.reasons)}


class TranscriptDropped(Exception):
    """A transcript cannot become a trajectory; ``reason`` is a short key for the stats."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def doc_id(title: str, text: str) -> str:
    """A stable id for a document parsed from a transcript: a hash of its title and text."""
    digest = hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:16]
    return f"doc-{digest}"


def _title_end(s: str) -> int:
    """Index of the ``)`` that closes a ``(Title: ...`` header whose text starts ``s``."""
    depth = 1
    for i, ch in enumerate(s):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
    cut = s.find(")")
    return cut if cut >= 0 else len(s)


def parse_documents(block: str) -> list[TrajectoryDoc]:
    """Parse an ``<information>`` block of ``Doc i(Title: t) text`` entries into documents.

    Titles may hold balanced parentheses (``Paris (film)``) and keep any quotes, as the corpus
    has them (wiki-18 titles are quoted), so that training renders a document exactly as a
    store search returns it. Texts may span several lines. Text before the first ``Doc`` header
    is ignored; a block without headers becomes one untitled document.
    """
    heads = list(_DOC_HEAD.finditer(block))
    if not heads:
        text = block.strip()
        return [TrajectoryDoc(id=doc_id("", text), contents=text)] if text else []
    docs = []
    for j, h in enumerate(heads):
        end = heads[j + 1].start() if j + 1 < len(heads) else len(block)
        rest = block[h.end() : end]
        cut = _title_end(rest)
        title = rest[:cut].strip()
        text = rest[cut + 1 :].strip()
        docs.append(TrajectoryDoc(id=doc_id(title, text), contents=f"{title}\n{text}"))
    return docs


def _strip_prompt(transcript: str, question: str) -> str:
    from ..baselines.search_r1 import strip_prompt

    transcript = strip_prompt(transcript)  # the instruction as the explicit agent renders it
    marker = "<|im_start|>assistant"
    if marker in transcript:
        return transcript.rsplit(marker, 1)[1]
    head = f"Question: {question.strip()}"
    if head in transcript:
        return transcript.split(head, 1)[1]
    return transcript


def _join(parts: list[str]) -> str:
    return " ".join(" ".join(p.split()) for p in parts if p.strip())


def parse_transcript(
    line: TranscriptLine, fmt: TranscriptFormat = "search-r1", *, traj_id: str = ""
) -> Trajectory:
    """Turn one transcript into a trajectory (without checking the answer against the golds).

    Raises:
        TranscriptDropped: ``no_answer``, ``empty_subquery``, ``empty_answer`` or
            ``information_without_search``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown transcript format {fmt!r}; choose from {FORMATS}")
    text = _strip_prompt(line.transcript, line.question)
    steps: list[TrajectoryStep] = []
    thought: list[str] = []
    awaiting_docs = False
    for m in _TAG.finditer(text):
        tag, body = m.group(1), m.group(2)
        if tag == "think" or (tag == "refine" and fmt == "autorefine"):
            thought.append(body)
        elif tag == "search":
            if not body.strip():
                raise TranscriptDropped("empty_subquery")
            steps.append(TrajectoryStep(thought=_join(thought), subquery=" ".join(body.split())))
            thought, awaiting_docs = [], True
        elif tag == "information":
            if not awaiting_docs:
                raise TranscriptDropped("information_without_search")
            steps[-1].documents = parse_documents(body)
            awaiting_docs = False
        elif tag == "answer":
            answer = " ".join(body.split())
            if not answer:
                raise TranscriptDropped("empty_answer")
            return Trajectory(
                id=traj_id or line.id or "trajectory",
                question=line.question,
                answers=list(line.answers),
                steps=steps,
                final_thought=_join(thought),
                answer=answer,
            )
    raise TranscriptDropped("no_answer")


def import_transcripts(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: TranscriptFormat = "search-r1",
    *,
    keep_wrong: bool = False,
) -> ImportStats:
    """Convert a JSONL file of transcripts into a trajectory file (written atomically).

    Args:
        path: Input JSONL (``question``, ``answers``, ``transcript``, optional ``id``).
        out: Output trajectory JSONL.
        fmt: ``"search-r1"`` or ``"autorefine"``.
        keep_wrong: Keep trajectories whose answer matches no gold answer (default: drop them).

    Returns:
        Kept/dropped counts with the reasons.

    Raises:
        TrajectoryError: A line is not JSON or lacks a field (the message names file and line),
            ``out`` is ``path`` itself, or no trajectory is kept.
    """
    p = Path(path)
    if Path(out).exists() and p.exists() and os.path.samefile(p, out):
        raise TrajectoryError(f"{out}: is the input file too; give another output path")
    stats = ImportStats()
    kept: list[Trajectory] = []
    seen: set[str] = set()
    try:
        rows = list(read_jsonl(p))
    except LatentRAGError as exc:
        raise TrajectoryError(str(exc)) from None
    for lineno, obj in rows:
        try:
            line = TranscriptLine.model_validate(obj)
        except ValidationError as exc:
            errs = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors()[:3]
            )
            raise TrajectoryError(f"{p}:{lineno}: invalid transcript line: {errs}") from None
        tid = line.id or f"line-{lineno}"
        if tid in seen:
            raise TrajectoryError(f"{p}:{lineno}: duplicate id {tid!r}")
        seen.add(tid)
        try:
            traj = parse_transcript(line, fmt, traj_id=tid)
        except TranscriptDropped as drop:
            stats.dropped += 1
            stats.reasons[drop.reason] += 1
            continue
        except ValidationError as exc:
            errs = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors()[:3]
            )
            raise TrajectoryError(f"{p}:{lineno}: invalid trajectory: {errs}") from None
        if not keep_wrong and not exact_match(traj.answer, traj.answers):
            stats.dropped += 1
            stats.reasons["wrong_answer"] += 1
            continue
        kept.append(traj)
        stats.kept += 1
    if not kept:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(stats.reasons.items())) or "no lines"
        raise TrajectoryError(f"{p}: no trajectory kept ({why}); {out} not written")
    write_trajectories(out, kept)
    return stats

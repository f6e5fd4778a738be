"""The trajectory schema: one explicit agent run per JSON line, validated with pydantic.

A trajectory is what an explicit agent (Search-R1, AutoRefine, your own) did for one question::

    {"id": "q1", "question": "...", "answers": ["gold", ...],
     "steps": [{"thought": "...", "subquery": "...",
                "documents": [{"id": "d7", "contents": "Title\\ntext"}, ...]}, ...],
     "final_thought": "...", "answer": "..."}

Each step is a thought, the subquery it wrote and the documents the agent read back; the final
thought precedes the answer. LatentRAG is trained to reproduce the actions and the answer, to
retrieve like the subqueries do, and to decode the thoughts and subqueries (paper §4).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import LatentRAGError
from ..io_utils import read_jsonl, write_text_atomic
from ..results import RetrievedDoc


def id_as_str(v: object) -> object:
    """An integer id as a string (files often number their rows); anything else as it is."""
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class TrajectoryError(LatentRAGError):
    """A trajectory file is missing or has a bad line (the message names file and line)."""


class TrajectoryDoc(BaseModel):
    """A document the agent read: corpus id and contents (title on the first line)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="Document id (in the agent's corpus).")
    contents: str = Field(description="Document text; the first line is the title.")

    _id_str = field_validator("id", mode="before")(id_as_str)

    def as_retrieved(self) -> RetrievedDoc:
        """This document as a :class:`RetrievedDoc` (score 0), for prompt building."""
        return RetrievedDoc(id=self.id, text=self.contents, score=0.0)


class TrajectoryStep(BaseModel):
    """One retrieval step: the thought, the subquery it led to, and the documents retrieved."""

    model_config = ConfigDict(extra="ignore")

    thought: str = Field(description="Natural-language thought before the subquery.")
    subquery: str = Field(description="Natural-language subquery sent to the retriever.")
    documents: list[TrajectoryDoc] = Field(
        default_factory=list, description="Documents the agent read back, best first."
    )

    @field_validator("subquery")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("subquery is empty")
        return v


class Trajectory(BaseModel):
    """One explicit agent trajectory (see the module docstring for the JSON form)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="Trajectory / question id, unique in a file.")
    question: str = Field(description="The question.")
    answers: list[str] = Field(default_factory=list, description="Gold answers (may be empty).")
    steps: list[TrajectoryStep] = Field(
        default_factory=list, description="Retrieval steps, in order (may be empty)."
    )
    final_thought: str = Field(default="", description="The thought before the answer.")
    answer: str = Field(description="The agent's final answer.")

    _id_str = field_validator("id", mode="before")(id_as_str)

    @field_validator("id", "question", "answer")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a non-empty string")
        return v


def _reason(exc: ValidationError) -> str:
    """A one-line summary of a pydantic error: ``steps.0.subquery: Field required; ...``."""
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "line"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def parse_trajectory(obj: dict, where: str) -> Trajectory:
    """Validate one JSON object; ``where`` (``"file:line"``) prefixes any error.

    Raises:
        TrajectoryError: Naming ``where`` and the first problems found.
    """
    try:
        return Trajectory.model_validate(obj)
    except ValidationError as exc:
        raise TrajectoryError(f"{where}: invalid trajectory: {_reason(exc)}") from None


def iter_trajectories(path: str | os.PathLike[str]) -> Iterator[Trajectory]:
    """Stream the trajectories of a JSONL file, validating each line.

    Raises:
        TrajectoryError: On a missing file, a line that is not JSON, a line that breaks the
            schema, or a repeated id; the message names the file and the 1-based line number.
    """
    p = Path(path)
    seen: dict[str, int] = {}
    try:
        for lineno, obj in read_jsonl(p):
            traj = parse_trajectory(obj, f"{p}:{lineno}")
            if traj.id in seen:
                raise TrajectoryError(
                    f"{p}:{lineno}: duplicate trajectory id {traj.id!r} (first on line "
                    f"{seen[traj.id]})"
                )
            seen[traj.id] = lineno
            yield traj
    except TrajectoryError:
        raise
    except LatentRAGError as exc:  # read_jsonl: missing file / bad JSON, already line-numbered
        raise TrajectoryError(str(exc)) from None


def read_trajectories(path: str | os.PathLike[str]) -> list[Trajectory]:
    """Read and validate a whole trajectory file (see :func:`iter_trajectories`).

    Raises:
        TrajectoryError: As :func:`iter_trajectories`, or when the file holds no trajectory.
    """
    trajs = list(iter_trajectories(path))
    if not trajs:
        raise TrajectoryError(f"{path}: no trajectories in the file")
    return trajs


def write_trajectories(path: str | os.PathLike[str], trajs: Iterable[Trajectory]) -> int:
    """Write trajectories as JSONL atomically; returns how many were written."""
    lines = [json.dumps(t.model_dump(mode="json"), ensure_ascii=False) + "\n" for t in trajs]
    write_text_atomic(path, "".join(lines))
    return len(lines)

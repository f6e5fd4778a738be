"""Collecting training trajectories: an explicit teacher agent answers your questions over your
store, and the trajectories that reach a gold answer become ``prepare``'s training file.

The teacher runs on its engine (token-level continuous batching, on the GPU when there is one).
Progress goes to ``OUT.progress.jsonl`` one question at a time, so an interrupted run resumes
where it stopped (``resume=True``); the trajectory file itself is written once, atomically, at
the end.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import LatentRAGError
from ..evaluation.questions import Question
from ..metrics import exact_match
from ..results import LatentRAGResult
from .trajectories import Trajectory, TrajectoryDoc, TrajectoryStep, write_trajectories


@dataclass
class CollectStats:
    """What a collection kept and dropped, and why it dropped what it did."""

    kept: int = 0
    dropped: int = 0
    reasons: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {"kept": self.kept, "dropped": self.dropped, "dropped_by_reason": dict(self.reasons)}


def progress_path(out: str | os.PathLike[str]) -> Path:
    """Where a collection into ``out`` records its progress."""
    return Path(f"{out}.progress.jsonl")


def trajectory_of(
    question: Question, result: LatentRAGResult, *, keep_wrong: bool = False
) -> Trajectory | str:
    """The training trajectory of the teacher's ``result``, or why it is dropped
    (``"no answer"``, ``"wrong answer"``)."""
    if not result.answer.strip():
        return "no answer"
    if not keep_wrong and not exact_match(result.answer, question.golds):
        return "wrong answer"
    steps = [
        TrajectoryStep(
            thought=s.thought or "",
            subquery=s.subquery,
            documents=[TrajectoryDoc(id=d.id, contents=d.text) for d in s.docs],
        )
        for s in result.steps
        if s.action == "retrieve" and s.subquery
    ]
    last = result.steps[-1] if result.steps else None
    final = last.thought if last is not None and last.action == "answer" else None
    return Trajectory(
        id=question.id,
        question=question.question,
        answers=list(question.golds),
        steps=steps,
        final_thought=final or "",
        answer=result.answer,
    )


def collect(
    agent: Any,
    store: Any,
    questions: Sequence[Question],
    out: str | os.PathLike[str],
    *,
    batch_size: int = 16,
    max_turns: int | None = None,
    top_k: int | None = None,
    keep_wrong: bool = False,
    resume: bool = False,
    show_progress: bool = False,
) -> CollectStats:
    """Run ``agent`` on ``questions`` over ``store`` and write the trajectories it gets right.

    Args:
        agent: The explicit teacher (an :class:`~latentrag_plugins.baselines.ExplicitAgent`).
        store: A store built with the agent's document tower.
        questions: The questions, with gold answers.
        out: The trajectory file to write (JSONL, what ``latentrag prepare`` reads).
        batch_size: Questions sent to the agent's engine at a time.
        max_turns: Most searches per question (default: the agent's).
        top_k: Documents per search (default: the agent's).
        keep_wrong: Keep trajectories whose answer matches no gold answer too.
        resume: Continue an interrupted collection into ``out``.
        show_progress: Show a progress bar.

    Raises:
        LatentRAGError: An unfinished collection into ``out`` exists and ``resume`` is off, or
            a bad batch size.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    log = progress_path(out)
    done = _read_progress(log) if resume else {}
    if log.exists() and not resume:
        raise LatentRAGError(
            f"{log}: an unfinished collection into {out} is there; pass --resume to continue it "
            "(resume=True), or delete the file to start over"
        )
    todo = [q for q in questions if q.id not in done]
    if log.exists() and not log.read_bytes().endswith(b"\n"):
        with open(log, "a", encoding="utf-8") as fh:
            fh.write("\n")  # a torn last line (killed mid-write) stays alone on its line
    with open(log, "a", encoding="utf-8") as fh, tqdm(
        total=len(questions), initial=len(questions) - len(todo), desc="collect", unit="q",
        disable=not show_progress,
    ) as bar:  # fmt: skip
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            results = agent.run_batch(
                [q.question for q in batch], store, max_turns=max_turns, top_k=top_k
            )
            for q, res in zip(batch, results):
                got = trajectory_of(q, res, keep_wrong=keep_wrong)
                record = {"id": q.id}
                if isinstance(got, str):
                    record["dropped"] = got
                else:
                    record["trajectory"] = got.model_dump(mode="json")
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                done[q.id] = record
            fh.flush()
            bar.update(len(batch))
    return _finish(questions, done, out, log)


def _read_progress(log: Path) -> dict[str, dict[str, Any]]:
    """The questions an interrupted collection has done (a torn last line is redone)."""
    done: dict[str, dict[str, Any]] = {}
    if not log.exists():
        return done
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # killed mid-line
        done[str(record["id"])] = record
    return done


def _finish(
    questions: Sequence[Question], done: dict[str, dict[str, Any]], out: Any, log: Path
) -> CollectStats:
    """Write the kept trajectories in question order and drop the progress file."""
    stats, kept = CollectStats(), []
    for q in questions:
        record = done[q.id]
        if "trajectory" in record:
            kept.append(Trajectory.model_validate(record["trajectory"]))
            stats.kept += 1
        else:
            stats.dropped += 1
            stats.reasons[record["dropped"]] += 1
    if not kept:
        raise LatentRAGError(
            f"the teacher answered none of the {len(questions)} questions correctly "
            f"({dict(stats.reasons)}); nothing written to {out} (progress kept in {log})"
        )
    write_trajectories(out, kept)
    log.unlink()
    return stats

"""What the LangChain and LlamaIndex adapters share around :func:`~.inference.latent_loop`.

- :func:`resolve_model`, :func:`check_question`: argument checks with clear errors.
- :func:`model_lock`: one re-entrant lock per model, serialising its forward passes across
  threads and tasks (the async adapters run model work in worker threads).
- :class:`LiveDecoder`: decodes thoughts and subqueries as the loop goes (``decode=True``), so
  they stream live. At each search request, the thought and subquery latents of every searching
  question are decoded in one batched generation (:func:`~.decoding.decode_items`) before the
  store is searched; the answer steps' thoughts are decoded when the loop ends.
  Timings stay honest: the loop's clock counts time spent outside it as ``retrieval``, so live
  decoding time is moved from ``retrieval`` to ``decode``, and decoding passes are added to
  ``forward_passes`` (batch-wide, like the core's batched decode).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from .decoding import decode_items
from .inference import SearchRequest
from .results import LatentRAGResult
from .runtime import check_text

if TYPE_CHECKING:
    from .model import LatentRAG

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def resolve_model(value: Any) -> LatentRAG:
    """A ``LatentRAG`` as is, or a checkpoint path loaded with ``LatentRAG.from_pretrained``."""
    from .model import LatentRAG

    if isinstance(value, LatentRAG):
        return value
    if isinstance(value, (str, os.PathLike)):
        return LatentRAG.from_pretrained(value)
    raise TypeError(f"model must be a LatentRAG or a checkpoint path, not {type(value).__name__}")


def model_lock(model: LatentRAG) -> threading.RLock:
    """The lock that serialises this model's forward passes across threads and tasks."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.RLock())


def check_question(question: Any, owner: str = "LatentRAG") -> str:
    """Return ``question`` if it is a non-empty string, else raise a clear ValueError."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{owner} got an empty question ({question!r}): ask a non-empty question")
    check_text(question, f"{owner}'s question")
    return question


class LiveDecoder:
    """Decodes a loop's latent thoughts and subqueries step by step.

    Args:
        model: The model (decoding holds its :func:`model_lock`).
        n_rows: Number of questions in the batch.
    """

    def __init__(self, model: LatentRAG, n_rows: int) -> None:
        self.model, self.lock = model, model_lock(model)
        self.texts: list[dict[int, tuple[str | None, str | None]]] = [{} for _ in range(n_rows)]
        self.live_ms = self.final_ms = 0.0
        self.passes = 0

    def _decode(self, items: list[tuple[str, Any]]) -> list[str]:
        with self.lock:
            texts, passes = decode_items(self.model, items)
        self.passes += passes
        return texts

    def step(self, req: SearchRequest) -> list[tuple[int, dict[str, Any]]]:
        """Decode the thought and subquery of every question of a search request.

        Returns:
            Per question, ``(row, {"step", "action", "thought", "subquery"})``.
        """
        t0 = time.perf_counter()
        thoughts = req.thoughts  # (b, m, d), or None
        items: list[tuple[str, Any]] = []
        for j in range(len(req.rows)):
            if thoughts is not None:
                items.append(("thought", thoughts[j]))
            items.append(("subquery", req.latents[j]))  # (n, d)
        texts = iter(self._decode(items))
        events = []
        for row in req.rows:
            thought = next(texts) if thoughts is not None else None
            subquery = next(texts)
            self.texts[row][req.step] = (thought, subquery)
            data = {
                "step": req.step,
                "action": "retrieve",
                "thought": thought,
                "subquery": subquery,
            }
            events.append((row, data))
        self.live_ms += (time.perf_counter() - t0) * 1e3
        return events

    def finish(self, results: list[LatentRAGResult]) -> None:
        """Write the decoded texts into ``results``, decode the thoughts still missing (the answer
        steps'), and move the decoding cost into the results' timings and pass counts."""
        t0 = time.perf_counter()
        missing = []
        for row, res in enumerate(results):
            for s in res.steps:
                s.thought, s.subquery = self.texts[row].get(s.index, (None, None))
                if s.thought is None:
                    missing.append((s, res._latents[s.index]["think"]))  # (m, d)
        if missing:
            for (s, _), text in zip(missing, self._decode([("thought", x) for _, x in missing])):
                s.thought = text
        self.final_ms = (time.perf_counter() - t0) * 1e3
        for res in results:
            t = res.timings_ms
            res.timings_ms = t.model_copy(
                update={
                    "retrieval": max(0.0, t.retrieval - self.live_ms),
                    "decode": t.decode + self.live_ms + self.final_ms,
                    "total": t.total + self.final_ms,
                }
            )
            res.forward_passes += self.passes


__all__ = ["LiveDecoder", "check_question", "model_lock", "resolve_model"]

"""Decoding thoughts and subqueries as the loop goes (``decode=True``), so they stream live.

At each search request, the thought and subquery latents of every searching question are
decoded in one batched generation (:func:`~latentrag_plugins.decoding.decode_items`), before the
store is searched. The thought of each question's final (answer) step is only known when the loop
ends; :meth:`LiveDecoder.finish` decodes those in one batch and writes every text into the
results' steps, as ``LatentRAG.run(decode=True)`` does.

Timings stay honest: the loop's clock counts time spent outside it as ``retrieval``, so live
decoding time is moved from ``retrieval`` to ``decode``; decoding passes are added to
``forward_passes`` (batch-wide, like the core's batched decode).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ..decoding import decode_items
from ..inference import SearchRequest
from ..results import LatentRAGResult
from .events import THOUGHT_EVENT

if TYPE_CHECKING:
    from ..model import LatentRAG


class LiveDecoder:
    """Decodes a loop's latent thoughts and subqueries step by step.

    Args:
        model: The model.
        lock: The model's lock (decoding runs forward passes).
        n_rows: Number of questions in the batch.
    """

    def __init__(self, model: LatentRAG, lock: threading.RLock, n_rows: int) -> None:
        self.model, self.lock = model, lock
        self.texts: list[dict[int, tuple[str | None, str | None]]] = [{} for _ in range(n_rows)]
        self.live_ms = self.final_ms = 0.0
        self.passes = 0

    def _decode(self, items: list[tuple[str, Any]]) -> list[str]:
        with self.lock:
            texts, passes = decode_items(self.model, items)
        self.passes += passes
        return texts

    def step(self, req: SearchRequest) -> list[tuple[int, str, dict[str, Any]]]:
        """Decode the thought and subquery of every question of a search request.

        Returns:
            One :data:`THOUGHT_EVENT` per question, as ``(row, name, data)``.
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
            events.append((row, THOUGHT_EVENT, data))
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

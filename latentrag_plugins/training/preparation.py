"""``prepare``: embed every subquery with the frozen document tower and find its pseudo-relevant
documents in the index (paper §4.2, Eq. 6), once, for any number of training runs."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import StoreError
from ..results import RetrievedDoc
from ..store.base import check_compatible
from .calibrate import DEFAULT_BETA, calibrate_beta, top_mass
from .prepared import PreparedData
from .trajectories import Trajectory

log = logging.getLogger(__name__)


def _search(store: Any, emb: np.ndarray, k: int) -> list[list[RetrievedDoc]]:
    if hasattr(store, "search_batch"):
        return store.search_batch(emb, k)
    if not hasattr(store, "search"):
        raise StoreError(f"{type(store).__name__} has no search(embedding, k) method")
    return [store.search(e, k) for e in emb]


def _store_vectors(store: Any, ids: Sequence[str]) -> np.ndarray | None:
    """The stored vectors of ``ids`` read back from a FAISS store (exactly what the index
    holds, without re-embedding), or None when the store cannot give them back."""
    index = getattr(store, "_index", None)
    all_ids = getattr(store, "ids", None)
    if index is None or all_ids is None or not hasattr(index, "reconstruct"):
        return None
    try:
        row = {d: i for i, d in enumerate(all_ids)}
        keys = np.array([row[d] for d in ids], dtype=np.int64)
        if hasattr(index, "reconstruct_batch"):
            out = index.reconstruct_batch(keys)
        else:
            out = np.stack([index.reconstruct(int(k)) for k in keys])
    except (AttributeError, KeyError, RuntimeError, TypeError):
        return None
    return np.asarray(out, dtype=np.float32).reshape(len(ids), -1)  # (D, dim)


def prepare(
    tower: Any,
    store: Any,
    trajectories: Sequence[Trajectory],
    *,
    top_n: int = 16,
    beta: float | None = None,
    calibrate: bool = False,
    target_mass: float = 0.5,
    batch_size: int = 64,
    show_progress: bool = True,
    source: str = "",
) -> PreparedData:
    """Embed subqueries, retrieve their top-``top_n`` documents and gather their embeddings.

    Args:
        tower: The frozen document tower (``encoder_id``, ``dim``, ``embed_texts``), e.g.
            ``model.doc_tower`` or :func:`latentrag_plugins.checkpoint_files.load_document_tower`.
        store: The index over the corpus, built with ``tower`` (checked).
        trajectories: Validated trajectories.
        top_n: Pseudo-relevant documents per subquery (paper: 16; capped at the store size).
        beta: Temperature of L_ret (default 0.03 unless ``calibrate``).
        calibrate: Choose β so the average top-3 mass of p is ``target_mass``.
        target_mass: See ``calibrate``.
        batch_size: Embedding and search batch size.
        show_progress: Show progress bars.
        source: Where the trajectories came from, recorded in the manifest.

    Returns:
        The prepared data (save it with :meth:`PreparedData.save`).
    """
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if beta is not None and not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive finite number, got {beta}")
    check_compatible(store, tower.encoder_id, tower.dim)
    if hasattr(store, "__len__"):
        if len(store) == 0:
            raise StoreError("the index is empty: index the corpus first")
        top_n = min(top_n, len(store))
    trajs = list(trajectories)
    subqueries = [s.subquery for t in trajs for s in t.steps]
    offsets = np.cumsum([0] + [len(t.steps) for t in trajs])
    s_count = len(subqueries)
    q_emb = np.zeros((s_count, tower.dim), dtype=np.float32)
    if s_count:
        q_emb = tower.embed_texts(
            subqueries, is_query=True, batch_size=batch_size, show_progress=show_progress
        ).astype(np.float32)  # (S, dim)

    doc_row: dict[str, int] = {}
    doc_text: list[str] = []
    rows = np.zeros((s_count, top_n), dtype=np.int64)
    bar = tqdm(total=s_count, desc="retrieving", unit="subquery", disable=not show_progress)
    for i in range(0, s_count, batch_size):
        found = _search(store, q_emb[i : i + batch_size], top_n)
        for j, docs in enumerate(found):
            if len(docs) < top_n:
                raise StoreError(f"the store returned {len(docs)} documents, expected {top_n}")
            for r, d in enumerate(docs[:top_n]):
                if d.id not in doc_row:
                    doc_row[d.id] = len(doc_text)
                    doc_text.append(d.text)
                rows[i + j, r] = doc_row[d.id]
        bar.update(len(found))
    bar.close()

    ids = list(doc_row)
    d_emb = _store_vectors(store, ids) if ids else np.zeros((0, tower.dim), np.float32)
    if d_emb is None:
        d_emb = tower.embed_texts(doc_text, batch_size=batch_size, show_progress=show_progress)
    d_emb = d_emb.astype(np.float32)  # (D, dim)
    q_t, d_t = torch.from_numpy(q_emb), torch.from_numpy(d_emb)
    rows_t = torch.from_numpy(rows)
    q_n = torch.nn.functional.normalize(q_t, dim=-1)  # (S, dim)
    d_n = torch.nn.functional.normalize(d_t, dim=-1)  # (D, dim)
    scores = torch.einsum("sd,snd->sn", q_n, d_n[rows_t]) if s_count else torch.zeros(0, top_n)

    calibrated = bool(calibrate and s_count and top_n > 3)
    if calibrate and not calibrated:
        log.warning("cannot calibrate beta (needs subqueries and top_n > 3); using the default")
    if calibrated:
        beta = calibrate_beta(scores, target=target_mass, k=3)
    beta = float(beta if beta is not None else DEFAULT_BETA)
    mass = top_mass(scores, beta, 3) if s_count else None
    return PreparedData(
        trajectories=trajs,
        query_emb=q_t,
        query_offsets=torch.from_numpy(offsets.astype(np.int64)),
        topn_rows=rows_t,
        topn_scores=scores.float(),
        doc_emb=d_t,
        doc_ids=ids,
        encoder_id=tower.encoder_id,
        beta=beta,
        meta={"top3_mass": mass, "calibrated": calibrated, "source": source},
    )

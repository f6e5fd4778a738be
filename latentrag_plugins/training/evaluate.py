"""Retrieval alignment of a (partly) trained model: does the latent subquery retrieve what the
natural-language subquery retrieves? (the paper's "retrieval overlap", Table 3 (b)).

Latent subqueries are computed teacher-forced, on the trajectories' own contexts, so the number
measures L_ret's objective directly, independent of the model's actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .batching import collate
from .forward import latent_embeddings
from .prepared import PreparedData
from .sequences import TrainExample

if TYPE_CHECKING:
    from ..model import LatentRAG


def retrieval_overlap(
    model: LatentRAG,
    data: PreparedData,
    examples: Sequence[TrainExample],
    store: Any,
    *,
    k: int = 3,
    batch_size: int = 16,
) -> float:
    """Mean share of each subquery's reference top-``k`` documents that its latent top-``k``
    also retrieves from ``store``.

    Args:
        model: The model (evaluated in eval mode; its mode is restored).
        data: The prepared data the examples come from (reference top-N lists).
        examples: Teacher-forced examples (:func:`.sequences.build_example`).
        store: The index the reference lists came from.
        k: Documents compared per subquery.
        batch_size: Examples per forward pass.

    Returns:
        The mean overlap in [0, 1] (0 when there is no subquery).
    """
    was = model.training
    model.eval()
    dev = model.device
    scores: list[float] = []
    try:
        for i in range(0, len(examples), batch_size):
            chunk = list(examples[i : i + batch_size])
            batch = collate(chunk, data, model.ids.pad)
            if batch["query_index"].shape[0] == 0:
                continue
            batch = {key: v.to(dev) for key, v in batch.items()}
            emb = latent_embeddings(model, batch).float().cpu().numpy()  # (S, dim)
            found = store.search_batch(emb, k)
            rows = [r for e in chunk for r in e.query_rows]
            for r, docs in zip(rows, found):
                ref = {data.doc_ids[j] for j in data.topn_rows[r, :k].tolist()}
                scores.append(len(ref & {d.id for d in docs}) / len(ref))
    finally:
        if was:  # back to training mode; the retriever towers always stay in eval mode
            model.train()
            model.doc_tower.eval()
            if model.query_tower is not None:
                model.query_tower.eval()
    return float(torch.tensor(scores).mean()) if scores else 0.0

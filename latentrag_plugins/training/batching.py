"""Length-binned batches (paper Appendix B) and batch collation for the latent losses.

Trajectories are sorted by token length and cut into ``n_bins`` bins of whole batches (only the
longest bin may end with a partial one); every batch is drawn from one bin, so sequences in a
batch have similar lengths and padding stays small. The plan of an epoch depends only on
``(seed, epoch)``, so a resumed run replays exactly the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .prepared import PreparedData
from .sequences import TrainExample


class BinnedBatches:
    """Plans the batches of each epoch.

    Args:
        lengths: Token length of each example.
        batch_size: Examples per batch.
        n_bins: Number of length bins (paper: 200), capped at the number of batches.
        seed: Seed of the shuffles.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, n_bins: int = 200, seed: int = 0):
        if batch_size < 1 or n_bins < 1:
            raise ValueError("batch_size and n_bins must be >= 1")
        if not lengths:
            raise ValueError("no training examples")
        self.batch_size = batch_size
        self.seed = seed
        order = np.argsort(np.asarray(lengths), kind="stable")
        n_batches = math.ceil(len(lengths) / batch_size)
        self.n_bins = max(1, min(n_bins, n_batches))
        # Bins hold whole batches, so no bin leaves a small batch behind.
        cuts = [len(c) for c in np.array_split(np.arange(n_batches), self.n_bins)]
        ends = np.minimum(np.cumsum(cuts) * batch_size, len(lengths))
        self.bins = [b.tolist() for b in np.split(order, ends[:-1])]

    def epoch(self, epoch: int) -> list[list[int]]:
        """The batches (lists of example indices) of ``epoch``, in training order."""
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[list[int]] = []
        for b in self.bins:
            idx = [b[i] for i in rng.permutation(len(b))]
            batches += [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __len__(self) -> int:
        """Batches per epoch."""
        return sum(math.ceil(len(b) / self.batch_size) for b in self.bins)


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    if not rows:
        return torch.zeros(0, 0, dtype=torch.long)
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def collate(
    examples: Sequence[TrainExample],
    data: PreparedData,
    pad_id: int,
    *,
    n_positives: int = 1,
) -> dict[str, torch.Tensor]:
    """Stack examples into one batch (right-padded) with the candidate documents of L_ret.

    Args:
        examples: The batch.
        data: Prepared data (reference embeddings, pseudo-relevant documents).
        pad_id: Padding token id.
        n_positives: Own top documents counted as positives (InfoNCE).

    Returns:
        Tensors (CPU): ``input_ids (B, L)``; ``label_index (K,)`` flat positions into ``B*L``,
        ``labels (K,)``, ``is_action (K,)``; ``query_index (S, n)`` and ``think_index (G, m)``
        flat positions of every step's slots; ``cand_emb (C, dim)`` the candidates (the union of
        the batch's pseudo-relevant documents), ``ref_emb (S, dim)``, ``ref_scores (S, C)``
        cosine similarities, ``positives (S, C)``; ``first_query (F,)`` each trajectory's first
        subquery and ``query_owner (S,)`` each subquery's trajectory (rows of ``first_query``),
        for trajectories with a search; ``dec_thought_group (Nt,)`` index into the
        think groups and ``dec_thought_targets (Nt, Lt)``; ``dec_query_group (Nq,)`` index
        into the query groups and ``dec_query_targets (Nq, Lq)`` (targets padded with -100).
    """
    width = max(e.length for e in examples)
    ids = _pad([e.input_ids for e in examples], pad_id)  # (B, L)
    lab_idx, labels, is_act = [], [], []
    q_idx, t_idx, q_rows = [], [], []
    first, owner = [], []  # each trajectory's first subquery; each subquery's trajectory
    thought_g, thought_t, query_g, query_t = [], [], [], []
    for b, e in enumerate(examples):
        off = b * width
        acts = set(e.action_pos)
        for p in e.label_pos:
            lab_idx.append(off + p)
            labels.append(e.input_ids[p + 1])
            is_act.append(p in acts)
        base_t, base_q = len(t_idx), len(q_idx)
        t_idx += [[off + p for p in g] for g in e.think_pos]
        q_idx += [[off + p for p in g] for g in e.query_pos]
        if e.query_pos:
            owner += [len(first)] * len(e.query_pos)
            first.append(base_q)
        q_rows += e.query_rows
        for g, tgt in e.thought_targets:
            thought_g.append(base_t + g)
            thought_t.append(tgt)
        for g, tgt in e.subquery_targets:
            query_g.append(base_q + g)
            query_t.append(tgt)
    rows = torch.tensor(q_rows, dtype=torch.long)  # (S,)
    top = data.topn_rows[rows]  # (S, N)
    cand, inverse = torch.unique(top.flatten(), return_inverse=True)  # (C,), (S*N,)
    cand_emb = F.normalize(data.doc_emb[cand].float(), dim=-1)  # (C, dim)
    ref_emb = F.normalize(data.query_emb[rows].float(), dim=-1)  # (S, dim)
    positives = torch.zeros(len(q_rows), len(cand), dtype=torch.bool)  # (S, C)
    k = max(1, min(n_positives, top.shape[1] if top.ndim == 2 else 1))
    if len(q_rows):
        own = inverse.view(top.shape)[:, :k]  # (S, k)
        positives.scatter_(1, own, True)
    m = len(t_idx[0]) if t_idx else 0  # (the first example may have no retrieval step)
    n = len(q_idx[0]) if q_idx else 0
    return {
        "input_ids": ids,
        "label_index": torch.tensor(lab_idx, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "is_action": torch.tensor(is_act, dtype=torch.bool),
        "query_index": torch.tensor(q_idx, dtype=torch.long).view(len(q_idx), n),
        "think_index": torch.tensor(t_idx, dtype=torch.long).view(len(t_idx), m),
        "cand_emb": cand_emb,
        "ref_emb": ref_emb,
        "ref_scores": ref_emb @ cand_emb.T,
        "positives": positives,
        "first_query": torch.tensor(first, dtype=torch.long),
        "query_owner": torch.tensor(owner, dtype=torch.long),
        "dec_thought_group": torch.tensor(thought_g, dtype=torch.long),
        "dec_thought_targets": _pad(thought_t, -100),
        "dec_query_group": torch.tensor(query_g, dtype=torch.long),
        "dec_query_targets": _pad(query_t, -100),
    }

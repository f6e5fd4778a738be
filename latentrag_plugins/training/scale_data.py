"""Synthetic prepared data of a chosen length, for measuring training speed and memory.

Every trajectory has the model's ``max_steps`` retrieval steps of ``top_k`` documents, thoughts
and subqueries of about the lengths the paper's teacher writes (Table 8: Search-R1 writes 121.8
thought and 37.9 subquery tokens per question), and documents as long as lets the teacher-
forced sequence fill a given length (:func:`fit_doc_tokens`). Reference embeddings and
pseudo-relevant documents are random unit vectors: L_ret costs what it costs on real data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..bench.synthetic import doc_texts, questions
from .prepared import PreparedData
from .trajectories import Trajectory

if TYPE_CHECKING:
    from ..model import LatentRAG

THOUGHT_TOKENS, SUBQUERY_TOKENS = 24, 9  # ≈ 121.8 / 5 and 37.9 / 4 (paper Table 8)
TOP_N = 16  # pseudo-relevant documents per subquery (paper)


def synthetic_trajectories(
    model: LatentRAG, n: int, doc_tokens: int, seed: int = 0
) -> list[Trajectory]:
    """``n`` trajectories of ``model.config.max_steps`` steps of ``top_k`` documents of about
    ``doc_tokens`` tokens each (the model cuts them to its ``max_doc_tokens``)."""
    cfg = model.config
    steps, k = cfg.max_steps, cfg.top_k
    texts = doc_texts(model.tokenizer, n=4 * k * steps, doc_tokens=doc_tokens, seed=seed)
    words = " ".join(t.split("\n", 1)[-1] for t in texts[:8]).split()

    def phrase(i: int, tokens: int) -> str:
        text = " ".join(words[(i * 7 + j) % len(words)] for j in range(tokens))
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
        return model.tokenizer.decode(ids).strip()

    def doc(i: int) -> dict[str, str]:
        return {"id": f"d{i % len(texts)}", "contents": texts[i % len(texts)]}

    out = []
    for i, q in enumerate(questions(n, seed)):
        traj_steps = [
            {
                "thought": phrase(i + t, THOUGHT_TOKENS),
                "subquery": phrase(i + t + 1, SUBQUERY_TOKENS),
                "documents": [doc(i + t * k + j) for j in range(k)],
            }
            for t in range(steps)
        ]
        out.append(
            Trajectory.model_validate(
                {
                    "id": f"q{i}", "question": q, "answers": ["answer"], "steps": traj_steps,
                    "final_thought": phrase(i + steps, THOUGHT_TOKENS), "answer": "answer",
                }
            )
        )  # fmt: skip
    return out


def fit_doc_tokens(model: LatentRAG, seq_len: int, seed: int = 0) -> int:
    """Set ``model.config.max_doc_tokens`` to the largest value at which the synthetic
    trajectories are laid out in at most ``seq_len`` tokens (the context budget cuts the last
    step's documents to fit), and return it.

    Raises:
        ValueError: Not even 8-token documents fit ``seq_len``.
    """
    from .sequences import SequenceSkipped, build_example

    cfg = model.config
    hi = max(16, seq_len // max(1, cfg.max_steps * cfg.top_k) + 16)
    traj = synthetic_trajectories(model, 1, doc_tokens=hi, seed=seed)[0]

    def fits(doc_tokens: int) -> bool:
        cfg.max_doc_tokens = doc_tokens
        try:
            build_example(model, traj, max_length=seq_len)
        except SequenceSkipped:
            return False
        return True

    lo = 8
    if not fits(lo):
        raise ValueError(f"{cfg.max_steps} steps of {cfg.top_k} documents do not fit {seq_len}")
    while lo < hi:  # largest fitting value in [lo, hi]
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    cfg.max_doc_tokens = lo
    return lo


def synthetic_prepared(model: LatentRAG, n: int, seed: int = 0) -> PreparedData:
    """Prepared data for :func:`synthetic_trajectories`: random unit reference embeddings and
    ``TOP_N`` random pseudo-relevant documents per subquery, in the model's embedding space."""
    trajs = synthetic_trajectories(model, n, model.config.max_doc_tokens + 16, seed)
    gen = torch.Generator().manual_seed(seed)
    s = sum(len(t.steps) for t in trajs)
    d, dim = max(TOP_N, 4 * s), model.doc_tower.dim
    doc_emb = F.normalize(torch.randn(d, dim, generator=gen), dim=-1)  # (D, dim)
    query_emb = F.normalize(torch.randn(s, dim, generator=gen), dim=-1)  # (S, dim)
    rows = torch.stack([torch.randperm(d, generator=gen)[:TOP_N] for _ in range(s)])  # (S, N)
    scores = (query_emb.unsqueeze(1) * doc_emb[rows]).sum(-1)  # (S, N)
    order = scores.argsort(dim=1, descending=True)
    offsets = torch.tensor([0] + [len(t.steps) for t in trajs]).cumsum(0)  # (T + 1,)
    data = PreparedData(
        trajectories=trajs,
        query_emb=query_emb,
        query_offsets=offsets,
        topn_rows=rows.gather(1, order),
        topn_scores=scores.gather(1, order),
        doc_emb=doc_emb,
        doc_ids=[f"doc-{i}" for i in range(d)],
        encoder_id=model.encoder_id,
        beta=0.03,
        meta={"source": "synthetic"},
    )
    data.check()
    return data

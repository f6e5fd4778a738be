"""Embedding a corpus: length-sorted batches pad little and return rows in input order; the demo
index build runs with the build thread count and gives the caller's back."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from latentrag_plugins import threads


def corpus_texts(n: int = 150, seed: int = 0) -> list[str]:
    """Passages of 3 to 60 words, in random order (as a real corpus is)."""
    rng = random.Random(seed)
    words = [
        "river",
        "town",
        "mountain",
        "king",
        "battle",
        "school",
        "author",
        "film",
        "song",
        "island",
    ]
    return [" ".join(rng.choices(words, k=rng.randint(3, 60))) for _ in range(n)]


def test_batches_pad_little_and_rows_keep_their_order(model):
    tower = model.doc_tower
    texts = corpus_texts()
    shapes: list[tuple[int, int]] = []  # (padded positions, real tokens) per batch
    forward = tower.forward_ids

    def recording(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        shapes.append((attention_mask.numel(), int(attention_mask.sum())))
        return forward(input_ids, attention_mask)

    tower.forward_ids = recording
    try:
        got = tower.embed_texts(texts, batch_size=16)
    finally:
        del tower.forward_ids
    padded, real = map(sum, zip(*shapes))
    assert padded / real < 1.1  # in input order: 1.65 positions per real token
    one_by_one = np.stack([tower.embed_texts([t])[0] for t in texts[::30]])
    np.testing.assert_allclose(got[::30], one_by_one, atol=1e-5)


def test_the_demo_index_build_uses_build_threads_and_restores_the_callers(
    model, tmp_path, monkeypatch
):
    from latentrag_plugins.demo import index_cache

    monkeypatch.setenv("LATENTRAG_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.jsonl"
    rows = [
        {"id": f"d{i}", "contents": f"Passage {i}\n{t}"} for i, t in enumerate(corpus_texts(20))
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen: list[int] = []
    embed = model.doc_tower.embed_texts

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(torch.get_num_threads())
        return embed(*args, **kwargs)

    monkeypatch.setattr(model.doc_tower, "embed_texts", recording)
    monkeypatch.setattr(threads, "build_threads", lambda: 2)
    before = torch.get_num_threads()
    assert len(index_cache.cached_index(model, corpus)) == 20
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == before

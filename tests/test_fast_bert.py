"""The lean BERT forward equals transformers' own, for texts (padded batches) and latent inputs."""

from __future__ import annotations

import torch

from latentrag_plugins import fast_bert

TEXTS = ["Where was Marie Curie born?", "Warsaw", "The capital of the country of the river Vistula"]


def test_fast_bert_equals_transformers(model, monkeypatch):
    tower = model.query_tower
    assert fast_bert.supports(tower.encoder)  # the real all-MiniLM-L6-v2
    enc = tower.tokenize(TEXTS)
    assert not bool(enc["attention_mask"].all())  # padded rows
    latents = torch.randn(
        2, model.config.n_query, tower.input_dim, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        fast = tower.forward_ids(**enc), tower.forward_embeds(latents)
        monkeypatch.setattr(fast_bert, "supports", lambda encoder: False)
        slow = tower.forward_ids(**enc), tower.forward_embeds(latents)
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=1e-5, atol=1e-5)


def test_fast_bert_is_not_used_where_it_would_differ(model):
    enc = model.query_tower.encoder
    enc.train()
    try:
        assert not fast_bert.supports(enc)  # dropout
    finally:
        enc.eval()
    assert not fast_bert.supports(model.llm)

"""The lean BERT forward equals transformers' own, for texts (padded batches) and latent inputs."""

from __future__ import annotations

import torch

from latentrag_plugins.speed import fast_bert

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


def test_fused_projections_follow_weight_updates_and_keep_gradients(model):
    """The stacked query/key/value weights are rebuilt after an in-place update, and with
    autograd on, gradients still reach the projections."""
    tower = model.query_tower
    latents = torch.randn(1, model.config.n_query, tower.input_dim)
    query = tower.encoder.encoder.layer[0].attention.self.query
    saved, trainable = query.weight.detach().clone(), query.weight.requires_grad
    try:
        with torch.inference_mode():
            before = tower.forward_embeds(latents)
        with torch.no_grad():
            query.weight.mul_(0.5)
        with torch.inference_mode():
            after = tower.forward_embeds(latents)
        assert not torch.allclose(before, after)
        query.weight.requires_grad_(True)
        tower.forward_embeds(latents).sum().backward()
        assert query.weight.grad is not None and bool(query.weight.grad.abs().sum() > 0)
    finally:
        with torch.no_grad():
            query.weight.copy_(saved)
        query.weight.grad = None
        query.weight.requires_grad_(trainable)
    with torch.inference_mode():
        torch.testing.assert_close(tower.forward_embeds(latents), before)


def test_projections_with_hooks_are_not_fused(model, monkeypatch):
    """A hook (or an adapter such as LoRA) on a projection must run: such layers go unfused."""
    tower = model.query_tower
    query = tower.encoder.encoder.layer[0].attention.self.query
    handle = query.register_forward_hook(lambda mod, args, out: out + 1.0)
    latents = torch.randn(1, model.config.n_query, tower.input_dim)
    try:
        with torch.inference_mode():
            fast = tower.forward_embeds(latents)
            monkeypatch.setattr(fast_bert, "supports", lambda encoder: False)
            slow = tower.forward_embeds(latents)
    finally:
        handle.remove()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_framing_embeddings_follow_weight_updates(model):
    """The query tower's [CLS]/[SEP] embeddings come from the current weights, under
    inference mode and in training alike."""
    tower = model.query_tower
    latents = torch.randn(1, model.config.n_query, tower.input_dim)
    words = tower.encoder.get_input_embeddings().weight
    row = tower._prefix_ids[0]
    saved = words[row].detach().clone()
    try:
        with torch.inference_mode():
            before = tower.forward_embeds(latents)
            again = tower.forward_embeds(latents)  # from the cache
        torch.testing.assert_close(again, before, rtol=0, atol=0)
        with torch.no_grad():
            words[row] += 0.5
        with torch.inference_mode():
            after = tower.forward_embeds(latents)
        fresh = tower.forward_embeds(latents)  # with autograd, after inference mode
        fresh.sum().backward()
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, fresh.detach())
    finally:
        with torch.no_grad():
            words[row] = saved
        tower.zero_grad(set_to_none=True)

"""Packed bfloat16 linears give ``F.linear``'s result (bit for bit on one thread), follow weight
updates, keep autograd and hooks, and stay within their memory budget."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
import torch.nn.functional as F

from latentrag_plugins.speed import fast_bert, packed_linear
from latentrag_plugins.speed.packed_linear import apply_linear, linear

needs_packing = pytest.mark.skipif(
    not packed_linear._available(), reason="this torch build cannot pack bfloat16 weights"
)


def _layer(d_in: int = 48, d_out: int = 40) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(d_in, d_out).to(torch.bfloat16)


SHAPES = [(48, 40), (256, 768), (768, 256), (384, 1536), (1536, 384)]  # demo LLM, MiniLM


@needs_packing
@pytest.mark.parametrize("d_in,d_out", SHAPES)
@pytest.mark.parametrize("rows", [1, 18, 64, 300])
def test_packed_equals_f_linear(d_in, d_out, rows):
    """Bit for bit on one thread; with two, oneDNN may split a long sum differently."""
    layer = _layer(d_in, d_out)
    x = torch.randn(2, rows, d_in).to(torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.inference_mode():
                got = linear(x, layer.weight, layer.bias)
                nobias = linear(x, layer.weight, None)
                want = F.linear(x, layer.weight, layer.bias), F.linear(x, layer.weight)
            assert id(layer.weight) in packed_linear._PACKED  # the packed path ran
            for a, b in zip((got, nobias), want):
                if n == 1:
                    assert torch.equal(a, b)
                else:
                    torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-1)
    finally:
        torch.set_num_threads(threads)


def test_data_writes_need_clear():
    """A write through ``.data`` bumps no version: ``clear()`` (which ``to_device`` calls)
    drops the stale copy."""
    layer = _layer()
    x = torch.randn(3, 48).to(torch.bfloat16)
    with torch.inference_mode():
        before = linear(x, layer.weight, layer.bias)
    layer.weight.data.mul_(0.5)
    packed_linear.clear()
    with torch.inference_mode():
        after = linear(x, layer.weight, layer.bias)
        assert torch.equal(after, F.linear(x, layer.weight, layer.bias))
    assert not torch.equal(before, after)


def test_global_hooks_keep_modules_off_the_direct_path():
    layer = _layer()
    assert packed_linear.plain_module(layer)
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: calls.append(mod)
    )
    try:
        assert not packed_linear.plain_module(layer)
        with torch.inference_mode():
            apply_linear(layer, torch.randn(3, 48).to(torch.bfloat16))
    finally:
        handle.remove()
    assert calls == [layer]


@needs_packing
def test_packed_copy_follows_in_place_updates_and_leaves_with_its_weight():
    layer = _layer()
    x = torch.randn(3, 48).to(torch.bfloat16)
    with torch.no_grad():
        before = linear(x, layer.weight, layer.bias)
        layer.weight.mul_(0.5)
        after = linear(x, layer.weight, layer.bias)
        assert torch.equal(after, F.linear(x, layer.weight, layer.bias))
    assert not torch.equal(before, after)
    wid = id(layer.weight)
    assert wid in packed_linear._PACKED
    del layer
    gc.collect()
    assert wid not in packed_linear._PACKED


def test_autograd_and_other_dtypes_take_plain_f_linear():
    layer = _layer().float()
    x = torch.randn(3, 48)
    linear(x, layer.weight, layer.bias).sum().backward()  # float32: plain
    assert layer.weight.grad is not None
    bf = _layer()
    xb = torch.randn(3, 48).to(torch.bfloat16)
    linear(xb, bf.weight, bf.bias).float().sum().backward()  # autograd on: plain
    assert bf.weight.grad is not None
    assert id(bf.weight) not in packed_linear._PACKED


@needs_packing
def test_budget_caps_packed_copies(monkeypatch, caplog):
    """Past the budget weights run unpacked, and a warning says so once."""
    monkeypatch.setattr(packed_linear, "PACKED_BUDGET_BYTES", 0)
    packed_linear._warn_budget_once.cache_clear()
    layer = _layer()
    x = torch.randn(3, 48).to(torch.bfloat16)
    with caplog.at_level("WARNING", logger=packed_linear.__name__), torch.inference_mode():
        got = linear(x, layer.weight, layer.bias)
        linear(x, layer.weight, layer.bias)
    assert id(layer.weight) not in packed_linear._PACKED
    assert torch.equal(got, F.linear(x, layer.weight, layer.bias).detach())
    assert [r.message.count("budget") for r in caplog.records] == [1]


@needs_packing
def test_to_device_drops_packed_copies(model):
    """``to_device`` (which also refreshes the bfloat16 twin) drops every packed copy, so a
    weight written through ``.data`` before it is never served stale."""
    m = copy.deepcopy(model).to_device("cpu", torch.float32, torch.bfloat16)
    with torch.inference_mode():
        m.latent_query_embedding(torch.randn(1, m.config.n_query, m.llm.config.hidden_size))
    assert packed_linear._PACKED  # the bfloat16 query tower ran on packed weights
    m.to_device("cpu", torch.float32, torch.bfloat16)
    assert not packed_linear._PACKED


def test_apply_linear_runs_hooks_and_wrappers():
    layer = _layer()
    handle = layer.register_forward_hook(lambda mod, args, out: out + 1.0)
    x = torch.randn(3, 48).to(torch.bfloat16)
    with torch.inference_mode():
        hooked = apply_linear(layer, x)
        handle.remove()
        plain = apply_linear(layer, x)
    assert torch.equal(hooked, plain + 1.0)


@needs_packing
def test_bfloat16_query_tower_on_packed_weights_equals_transformers(model, monkeypatch):
    """The demo's mixed precision runs the query tower in bfloat16 on packed weights; the lean
    BERT forward still equals transformers' up to bfloat16 rounding (it fuses the query, key and
    value products)."""
    tower = copy.deepcopy(model.query_tower).to(torch.bfloat16)
    latents = torch.randn(
        1, model.config.n_query, tower.input_dim, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        fast = tower.forward_embeds(latents)
        dense = tower.encoder.encoder.layer[0].intermediate.dense.weight
        assert any(ref() is dense for ref, *_ in packed_linear._PACKED.values())
        monkeypatch.setattr(fast_bert, "supports", lambda encoder: False)
        slow = tower.forward_embeds(latents)
    torch.testing.assert_close(fast, slow, rtol=1e-2, atol=1e-2)


@needs_packing
def test_inference_tensor_weights_are_packed_only_when_immutable():
    """A model loaded in inference mode has weights without a version counter, so an in-place
    update could not be seen: those run unpacked, unless the caller owns an immutable copy."""
    with torch.inference_mode():
        layer = _layer()
        x = torch.randn(3, 48).to(torch.bfloat16)
        linear(x, layer.weight, layer.bias)
        assert id(layer.weight) not in packed_linear._PACKED
        layer.weight.mul_(0.5)
        assert torch.equal(
            linear(x, layer.weight, layer.bias), F.linear(x, layer.weight, layer.bias)
        )
        linear(x, layer.weight, layer.bias, immutable=True)
        assert id(layer.weight) in packed_linear._PACKED

"""The lean decoder forward equals transformers' forward bit for bit, and is used only where it
can."""

from __future__ import annotations

import pytest
import torch

from latentrag_plugins.context import BatchedContext
from latentrag_plugins.model_zoo import build_llm
from latentrag_plugins.speed import lean_decoder, packed_linear

# Passes as the loops make them: a left-padded batch, a branch pass, token passes, a pass that
# returns only its last positions, a pass after a crop, and a pass one row sits out.
FEEDS = [
    dict(chunks=[[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22]]),
    dict(chunks=[[30, 31, 32, 33, 34], [40, 41, 42, 43, 44]], branch=2),
    dict(chunks=[[50], [51]]),
    dict(chunks=[[60, 61, 62, 63, 64, 65, 66, 67, 68, 69], [70, 71]], keep=3),
    dict(drop=2),
    dict(chunks=[[80], []]),
    dict(chunks=[[90, 91, 92, 93, 94, 95, 96, 97], [98]], keep=1),
]


def _run(llm, lean: bool) -> tuple[list[torch.Tensor], BatchedContext]:
    ctx = BatchedContext(llm, 2, pad_id=0)
    ctx._lean_ok[id(ctx.decoder)] = lean
    out = []
    with torch.inference_mode():
        for f in FEEDS:
            if "drop" in f:
                ctx.drop_last(f["drop"], [0, 1])
            else:
                out.append(ctx.feed(f["chunks"], f.get("branch", 0), f.get("keep")))
    return out, ctx


@pytest.mark.parametrize(
    "shape,extra",
    [("tiny", {}), ("tiny-llama", {}), ("tiny-llama", {"mlp_bias": True, "attention_bias": True})],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_forward_equals_transformers(shape, extra, dtype):
    """Bit for bit (one thread), bfloat16 included, where its products run on packed weights."""
    llm = build_llm(shape, vocab_size=128, seed=3, num_key_value_heads=2, **extra)
    with torch.no_grad():  # biases start at zero: make them count
        for name, p in llm.named_parameters():
            if name.endswith("proj.bias"):
                p.normal_(std=0.1)
    llm = llm.to(dtype).eval()
    assert lean_decoder.supports(llm.get_decoder())
    packed_linear.clear()
    lean, ctx_lean = _run(llm, True)
    if dtype == torch.bfloat16 and packed_linear._available():  # its products ran packed
        proj = llm.get_decoder().layers[0].mlp.down_proj.weight
        assert any(ref() is proj for ref, *_ in packed_linear._PACKED.values())
    ref, ctx_ref = _run(llm, False)
    passes = [f for f in FEEDS if "chunks" in f]
    for i, (f, a, b) in enumerate(zip(passes, lean, ref)):
        assert a.shape == b.shape, i
        if f.get("keep") is None:
            assert torch.equal(a, b), f"pass {i}: max diff {(a - b).abs().max()}"
        else:  # fewer queries in the last layer: sdpa may round differently
            torch.testing.assert_close(
                a.float(), b.float(), rtol=1e-2, atol=1e-2 if dtype == torch.bfloat16 else 1e-5
            )
    for la, lb in zip(ctx_lean.cache.layers, ctx_ref.cache.layers):
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)


def test_lean_forward_is_used_only_where_it_is_exact():
    llm = build_llm("tiny", vocab_size=128, seed=3).eval()
    dec = llm.get_decoder()
    assert lean_decoder.supports(dec)
    dec.train()
    assert not lean_decoder.supports(dec)  # dropout
    dec.eval()
    handle = dec.layers[0].mlp.register_forward_hook(lambda *a: None)
    assert not lean_decoder.supports(dec)  # e.g. a profiler or an offload hook
    handle.remove()
    seen = []
    handle = dec.embed_tokens.register_forward_hook(lambda *a: seen.append(1))
    assert lean_decoder.supports(dec)  # the context embeds the ids itself, hooks included
    BatchedContext(llm, 1, 0).feed([[1, 2, 3]])
    assert seen
    handle.remove()
    dec.config._attn_implementation = "eager"
    assert not lean_decoder.supports(dec)
    dec.config._attn_implementation = "sdpa"

    att = dec.layers[0].self_attn
    proj = att.q_proj

    class Adapted(torch.nn.Linear):  # e.g. a quantised layer
        pass

    class Wrapper(torch.nn.Module):  # e.g. peft's lora.Linear around the base nn.Linear
        def __init__(self, base):
            super().__init__()
            self.base_layer, self.weight, self.bias = base, base.weight, base.bias

        def forward(self, x):
            return self.base_layer(x) + 1.0

    for replacement in (Adapted(proj.in_features, proj.out_features), Wrapper(proj)):
        att.q_proj = replacement
        assert not lean_decoder.supports(dec)
    att.q_proj = proj
    proj._hf_hook = object()  # accelerate's hooks replace forward instead of registering
    assert not lean_decoder.supports(dec)
    del proj._hf_hook
    assert lean_decoder.supports(dec)


def test_a_trimmed_pass_masks_only_its_last_layer(monkeypatch):
    """Where transformers needs no mask (one unpadded row, no cache), only the trimmed last
    layer gets one, so the other layers keep sdpa's fastest kernels."""
    from transformers.integrations import sdpa_attention

    seen = []
    real = sdpa_attention.sdpa_attention_forward

    def spy(module, q, k, v, mask, **kw):
        seen.append(mask is None)
        return real(module, q, k, v, mask, **kw)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", spy)
    llm = build_llm("tiny", vocab_size=128, seed=3).eval()
    ctx = BatchedContext(llm, 1, pad_id=0)
    with torch.inference_mode():
        ctx.feed([[5, 6, 7, 8, 9, 10]], keep=2)
    assert seen == [True] * (llm.config.num_hidden_layers - 1) + [False]

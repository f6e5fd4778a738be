"""Mixed precision: passes over many tokens run on the LLM's wide twin, token-by-token passes on
the LLM, and the cache follows; results match a single-dtype run."""

from __future__ import annotations

import copy

import pytest
import torch

from latentrag_plugins import context
from latentrag_plugins.baselines.explicit import ExplicitAgent
from latentrag_plugins.baselines.naive import NaiveRAG
from latentrag_plugins.cli.common import dtype_kwargs
from latentrag_plugins.context import WIDE_FROM, BatchedContext
from latentrag_plugins.speed.precision import precision_name
from tests.conftest import make_model, trace
from tests.test_model_loop import QS


class Widths:
    """Records the width of every pass of a decoder."""

    def __init__(self, llm: torch.nn.Module) -> None:
        self.seen: list[int] = []
        self.handle = llm.get_decoder().register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.seen.append(kwargs["inputs_embeds"].shape[1])


def test_wide_passes_run_on_the_twin_and_results_match(tokenizer, store, force):
    plain = make_model(tokenizer, "tiny")
    mixed = copy.deepcopy(plain).to_device("cpu", torch.float32, torch.float64)
    assert plain.wide_llm is None and mixed.wide_llm.dtype == torch.float64
    assert precision_name(mixed) == "float32+float64"
    with force(plain, "hidden"):
        want = plain.run_batch(QS, store, max_steps=3, decode=True)
    with force(mixed, "hidden"):  # (its set-up pass runs before the hooks)
        narrow, wide = Widths(mixed.llm), Widths(mixed.wide_llm)
        got = mixed.run_batch(QS, store, max_steps=3, decode=True)
    assert trace(got) == trace(want)
    assert [[s.thought for s in r.steps] for r in got] == [
        [s.thought for s in r.steps] for r in want
    ]
    assert wide.seen and min(wide.seen) >= WIDE_FROM  # step passes and decode prompts
    assert narrow.seen and max(narrow.seen) < WIDE_FROM  # answer and decoded tokens
    for lg, lw in zip(got[0]._latents, want[0]._latents):
        assert lg["think"].dtype == torch.float32
        torch.testing.assert_close(lg["think"], lw["think"], rtol=1e-4, atol=1e-5)


def test_mixed_bfloat16_runs_every_method(tokenizer, store, force):
    """float32 LLM + bfloat16 twin: LatentRAG, naive RAG and the explicit agent (which switches
    the cache between dtypes every turn) all run, and the twin does the wide passes."""
    model = make_model(tokenizer, "tiny").to_device("cpu", **dtype_kwargs("mixed"))
    assert precision_name(model) == "float32+bfloat16"
    assert next(model.query_tower.parameters()).dtype == torch.bfloat16  # towers run wide too
    with force(model, "retrieve"):
        wide = Widths(model.wide_llm)
        res = model.run_batch(QS, store, max_steps=2)
    assert all(isinstance(r.answer, str) and len(r.steps) == 3 for r in res)
    assert len(wide.seen) >= 3
    assert all(isinstance(r.answer, str) for r in NaiveRAG(model).run_batch(QS, store))

    agent = ExplicitAgent.init(
        copy.deepcopy(model.llm), model.doc_tower, tokenizer=copy.deepcopy(model.tokenizer),
        device="cpu", dtype=torch.float32, max_turn_tokens=16, max_answer_tokens=4,
    )  # fmt: skip
    agent.to_device("cpu", torch.float32, torch.bfloat16)
    narrow, wide = Widths(agent.llm), Widths(agent.wide_llm)
    out = agent.run_batch(QS[:2], store, max_turns=2)
    assert all(isinstance(r.answer, str) for r in out)
    assert wide.seen and narrow.seen and max(narrow.seen) < WIDE_FROM


def test_dtype_choices():
    assert dtype_kwargs("mixed") == {"dtype": torch.float32, "wide_dtype": torch.bfloat16}
    assert dtype_kwargs("auto") == {"dtype": None, "wide_dtype": None}
    assert dtype_kwargs("bfloat16") == {"dtype": torch.bfloat16, "wide_dtype": None}
    with pytest.raises(AttributeError):
        dtype_kwargs("float8")


def test_switching_dtype_drops_the_bucket_padding_from_the_cache(tokenizer, monkeypatch):
    """The cast to the narrow dtype also drops the cache columns every row masks (bfloat16 bucket
    padding), so token passes attend only to real tokens; their results do not change."""
    m = make_model(tokenizer).to_device("cpu", **dtype_kwargs("mixed"))
    wide = m.prompts.question(QS[0]) + m.prompts.think_slots()
    assert len(wide) >= WIDE_FROM and len(wide) % context.BUCKET

    def run() -> tuple[BatchedContext, torch.Tensor]:
        ctx = BatchedContext(m.llm, 1, m.ids.pad, m.wide_llm)
        ctx.feed([wide])
        return ctx, ctx.feed([[m.ids.answer]])[0, -1]  # (d,)

    with torch.inference_mode():
        ctx, h = run()
        monkeypatch.setattr(context, "BUCKET", 1)
        plain_ctx, plain = run()
    assert ctx.mask.shape[1] == plain_ctx.mask.shape[1] == len(wide) + 1
    assert bool(ctx.mask.all())
    assert all(layer.keys.shape[-2] == len(wide) + 1 for layer in ctx.cache.layers)
    torch.testing.assert_close(h, plain, rtol=2e-2, atol=2e-2)

"""CUDA checks: the latent loop on a GPU agrees with the CPU, bfloat16 runs end to end, and
training uses the GPU with bf16 mixed precision. Skipped where no CUDA device is visible (CI);
run on a GPU machine with ``python -m pytest tests/test_gpu.py``."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.conftest import make_model, trace
from tests.test_model_loop import QS
from tests.test_training import prepared, world, wstore  # noqa: F401  (module fixtures)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_run_equals_cpu_run(tokenizer, store, force):
    cpu = make_model(tokenizer, "tiny")
    gpu = copy.deepcopy(cpu).to_device("cuda", torch.float32)
    assert gpu.device.type == "cuda"
    with force(cpu, "hidden"):
        want = cpu.run_batch(QS, store, max_steps=3)
    with force(gpu, "hidden"):
        got = gpu.run_batch(QS, store, max_steps=3)
        single = [gpu.run(q, store, max_steps=3) for q in QS]
    assert trace(got) == trace(want) == trace(single)
    for g, w in zip(got, want):
        for lg, lw in zip(g._latents, w._latents):
            torch.testing.assert_close(lg["think"].cpu(), lw["think"], rtol=1e-3, atol=1e-4)


def test_cuda_bfloat16_runs_end_to_end(tokenizer, store, force):
    m = make_model(tokenizer, "tiny").to_device("cuda")
    assert next(m.llm.parameters()).dtype == torch.bfloat16  # the default on a GPU
    with force(m, "retrieve"):
        res = m.run_batch(QS, store, max_steps=2, decode=True)
    for r in res:
        assert [s.action for s in r.steps] == ["retrieve", "retrieve", "answer"]
        assert all(s.docs for s in r.steps[:2]) and isinstance(r.answer, str)
        assert all(isinstance(s.thought, str) for s in r.steps)


def test_cuda_training_uses_bf16_mixed_precision(tmp_path, tokenizer, prepared):  # noqa: F811
    from latentrag_plugins import LatentRAG
    from latentrag_plugins.training import TrainConfig, Trainer

    cfg = TrainConfig(full_finetune=True, max_steps=5, batch_size=4, log_every=1, save_every=0)
    out = tmp_path / "run"
    summary = Trainer(make_model(tokenizer, "tiny"), prepared, out, cfg).train(show_progress=False)
    assert summary["device"].startswith("cuda") and summary["mixed_precision"] == "bf16"
    assert summary["steps"] == 5
    loaded = LatentRAG.from_pretrained(out, device="cuda")
    assert loaded.device.type == "cuda"
    assert math.isfinite(sum(p.float().sum().item() for p in loaded.proj_ret.parameters()))


def test_base_lm_pretrains_on_the_gpu(tmp_path, monkeypatch):
    """The demo's base LM pretrains on a GPU when there is one, and saves a CPU-loadable model."""
    from transformers import AutoModelForCausalLM

    from latentrag_plugins.demo import base_lm

    seen = []
    real = base_lm.pretrain
    monkeypatch.setattr(
        base_lm,
        "pretrain",
        lambda model, *a, **k: seen.append(model.device.type) or real(model, *a, **k),
    )
    texts = ["Ann was born in Oslo. Bo was born in Rome."] * 16
    out = base_lm.build_base_lm(
        texts, tmp_path / "b", shape="tiny", vocab_size=300, seq_len=32, steps=2
    )
    base_lm.continue_pretraining(out, texts, seq_len=32, steps=2, batch_size=2)
    assert seen == ["cuda", "cuda"]
    assert AutoModelForCausalLM.from_pretrained(out).device.type == "cpu"

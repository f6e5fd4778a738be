"""Training at scale, on a CPU: the scale check (``python -m
latentrag_plugins.training.scale_check``) in its smoke mode, the synthetic data it trains on,
and LoRA's frozen LLM in bf16 under bf16 mixed precision. (The 7B-shaped run needs a GPU:
``scripts/gpu_train_check.sh``.)"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import make_model

SMOKE = ["--shape", "tiny", "--tower", "tiny-qwen3-emb", "--seq-len", "600", "--batch", "4",
         "--micro-batch", "2", "--steps", "2", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one state per process and refuses another mixed precision: these tests
    switch between bf16 and none, as separate runs would."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_scale_check_smoke_reports_its_figures(tmp_path, capsys):
    from latentrag_plugins.training.scale_check import PAPER_EPOCHS, main

    assert main(["--out", str(tmp_path), *SMOKE, "--mixed-precision", "bf16"]) == 0
    report = json.loads((tmp_path / "scale_check.json").read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["environment"]["device"] == "cpu" and report["mixed_precision"] == "bf16"
    assert len(report["step_seconds"]) == len(report["losses"]) == 2
    assert report["seconds_per_step"] > 0 and report["tokens_per_second"] > 0
    # A step trains on the whole batch (two micro-batches of two), every sequence ~600 tokens.
    assert report["tokens_per_step"] == pytest.approx(4 * report["mean_sequence_tokens"], rel=0.03)
    assert 0.85 * 600 < report["mean_sequence_tokens"] <= 600
    assert report["trainable_parameters"]["llm"] > 0  # LoRA
    proj = report["projection"]
    steps = proj["trajectories"] * PAPER_EPOCHS / 4
    want = steps * report["seconds_per_step"] / 3600
    assert proj["hours_1_gpu_at_seq_len"] == pytest.approx(want, abs=0.06)
    assert proj["hours_8_gpus_at_seq_len"] == pytest.approx(want / 8, abs=0.06)
    # Measurement only: no checkpoint, no exported model.
    run = tmp_path / "scale_check_run"
    assert (run / "train_log.jsonl").is_file() and (run / "summary.json").is_file()
    assert not (run / "config.json").exists() and not (run / "checkpoints").exists()
    rerun = ["--out", str(tmp_path), *SMOKE, "--steps", "1", "--mixed-precision", "bf16"]
    assert main(rerun) == 0  # in place


def test_synthetic_trajectories_fill_the_length(tokenizer):
    from latentrag_plugins.training.latent_task import build_examples
    from latentrag_plugins.training.scale_data import fit_doc_tokens, synthetic_prepared

    model = make_model(tokenizer, "tiny", max_context_tokens=900)
    doc_tokens = fit_doc_tokens(model, 900)
    assert model.config.max_doc_tokens == doc_tokens > 8
    data = synthetic_prepared(model, 6)
    examples, skipped = build_examples(model, data, 900)
    assert not skipped and len(examples) == 6
    assert all(0.9 * 900 < e.length <= 900 for e in examples)
    assert all(len(e.query_pos) == model.config.max_steps for e in examples)
    assert data.top_n == 16 and data.encoder_id == model.encoder_id


def test_llm_weight_dtype():
    from latentrag_plugins.training import TrainConfig
    from latentrag_plugins.training.trainable import llm_weight_dtype

    bf16, f32 = torch.bfloat16, torch.float32
    assert llm_weight_dtype(TrainConfig(), "bf16") == bf16  # LoRA in bf16: frozen base in bf16
    assert llm_weight_dtype(TrainConfig(), "no") == f32
    assert llm_weight_dtype(TrainConfig(), "fp16") == f32
    assert llm_weight_dtype(TrainConfig(base_dtype="float32"), "bf16") == f32
    assert llm_weight_dtype(TrainConfig(base_dtype="bfloat16"), "no") == bf16
    assert llm_weight_dtype(TrainConfig(full_finetune=True, base_dtype="bfloat16"), "bf16") == f32


def test_lora_in_bf16_keeps_the_frozen_llm_in_bf16(tmp_path, tokenizer):
    """Frozen LLM weights in bf16, everything that trains in float32; the export loads."""
    from latentrag_plugins import LatentRAG
    from latentrag_plugins.training import TrainConfig, Trainer
    from latentrag_plugins.training.scale_data import fit_doc_tokens, synthetic_prepared

    model = make_model(tokenizer, "tiny", max_context_tokens=700)
    fit_doc_tokens(model, 700)
    data = synthetic_prepared(model, 4)
    cfg = TrainConfig(mixed_precision="bf16", max_steps=1, batch_size=2, save_every=0)
    trainer = Trainer(model, data, tmp_path / "run", cfg)
    summary = trainer.train(show_progress=False)
    assert summary["mixed_precision"] == "bf16" and summary["format"] == "full"
    trained = trainer.task.module.model
    frozen = {p.dtype for p in trained.llm.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in trained.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    for part in (trained.proj_ret, trained.query_tower):
        assert {p.dtype for p in part.parameters()} == {torch.float32}
    assert summary["tokens"] > 0 and summary["tokens_per_second"] > 0
    LatentRAG.from_pretrained(tmp_path / "run", device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scale_check_on_cuda_reports_memory(tmp_path):
    from latentrag_plugins.training.scale_check import main

    smoke = [a if a != "cpu" else "cuda" for a in SMOKE]
    assert main(["--out", str(tmp_path), *smoke]) == 0
    report = json.loads((tmp_path / "scale_check.json").read_text())
    assert report["mixed_precision"] == "bf16" and report["environment"]["device"] != "cpu"
    assert report["memory_after_init_gib"] > 0 and report["peak_memory_gib"] > 0

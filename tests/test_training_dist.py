"""Training on several processes (CPU, gloo): two processes train the same model as one process
with the same global batch; checkpoints, ``--resume`` and the export are written once, whole;
DeepSpeed ZeRO-1 (where it is installed) trains the same model; the shipped ZeRO-1 config is
valid for the installed Accelerate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentrag_plugins.errors import LatentRAGError
from tests.conftest import make_model
from tests.test_training import world, wstore  # noqa: F401  (module fixtures)

ROOT = Path(__file__).resolve().parent.parent
# Two processes, batch 2 each == one process, batch 2, two batches accumulated per step.
TRAIN = ["--batch-size", "2", "--llm-dropout", "0", "--lr-scheduler", "constant",
         "--save-every", "1", "--log-every", "1", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer, world, wstore):  # noqa: F811
    """A LoRA-trainable tiny model and prepared data (12 trajectories: 6 batches of 2), on disk."""
    from latentrag_plugins.training import prepare

    root = tmp_path_factory.mktemp("dist")
    make_model(tokenizer, "tiny", max_doc_tokens=24).save_pretrained(root / "init")
    store, tower = wstore
    prepare(tower, store, world[0], show_progress=False).save(root / "prep")
    return root


def _launch(args: list[str], *, deepspeed: bool = False) -> subprocess.CompletedProcess:
    """``latentrag train ARGS`` on two CPU processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if deepspeed:  # its CPU accelerator; Accelerate drops DeepSpeed under ACCELERATE_USE_CPU
        env["DS_ACCELERATOR"] = "cpu"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                    "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no"]  # fmt: skip
    cmd = [*launcher, "-m", "latentrag_plugins.cli.main", "train", *args]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _weights(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the exported model at ``run``'s root, by file and name."""
    out = {}
    for f in sorted(run.glob("**/*.safetensors")):
        rel = f.relative_to(run)
        if rel.parts[0] != "checkpoints":
            out |= {f"{rel}:{k}": v for k, v in load_file(f).items()}
    return out


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def one_process(inputs):
    """The reference: one process, global batch 4 by accumulation, 3 steps."""
    from latentrag_plugins.training import TrainConfig, Trainer

    cfg = TrainConfig(
        batch_size=2, gradient_accumulation_steps=2, max_steps=3, llm_dropout=0.0,
        lr_scheduler="constant", log_every=1, save_every=0,
    )  # fmt: skip
    out = inputs / "one"
    Trainer(str(inputs / "init"), str(inputs / "prep"), out, cfg).train(show_progress=False)
    return out


@pytest.fixture(scope="module")
def two_processes(inputs):
    """Two processes, batch 2 each: steps 1-2, then --resume to step 3."""
    out = inputs / "two"
    base = ["--model", str(inputs / "init"), "--data", str(inputs / "prep"), "--out", str(out)]
    first = _launch([*base, *TRAIN, "--max-steps", "2"])
    second = _launch([*base, *TRAIN, "--max-steps", "3", "--resume"])
    return out, first.stdout + second.stdout


def test_two_processes_train_the_same_model_as_one(one_process, two_processes):
    out, stdout = two_processes
    assert stdout.count("trained ") == 2  # one report per launch: the main process's
    want, got = _weights(one_process), _weights(out)
    assert want.keys() == got.keys() and want
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    a, b = _log(one_process), _log(out)
    assert [r["step"] for r in b] == [1, 2, 3]  # one line per step: written once
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["tokens"] == ra["tokens"] > 0  # both processes' tokens counted
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3


def test_checkpoints_and_export_are_written_once_and_whole(one_process, two_processes):
    from latentrag_plugins import LatentRAG

    out, _ = two_processes
    files = _files(out)
    assert not [f for f in files if ".export-tmp" in f or f.endswith(".tmp")]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-3"]  # the newest two (--save-total-limit 2), one resumed
    for name in ckpts:
        state = out / "checkpoints" / name / "train_state"
        assert sorted(p.name for p in state.glob("random_states_*")) == [
            "random_states_0.pkl",
            "random_states_1.pkl",
        ]  # one per process
        assert (out / "checkpoints" / name / "trainer_state.json").is_file()
        LatentRAG.from_pretrained(out / "checkpoints" / name, device="cpu")  # whole
    # The run directory holds what a one-process run holds, plus the processes' RNG states.
    one = {f for f in _files(one_process) if not f.startswith("checkpoints/")}
    two = {f for f in files if not f.startswith("checkpoints/")}
    assert one == two
    for f in files:
        if f.endswith(".json"):
            json.loads((out / f).read_text())


def test_a_launch_whose_processes_do_not_meet_is_refused(inputs, monkeypatch):
    """Two processes that each see only themselves would write the same files: refused before
    any file is written."""
    from latentrag_plugins.training import TrainConfig, Trainer

    monkeypatch.setenv("WORLD_SIZE", "2")  # launched as one of two; Accelerate sees one
    out = inputs / "alone"
    with pytest.raises(LatentRAGError, match="ACCELERATE_USE_CPU"):
        Trainer(str(inputs / "init"), str(inputs / "prep"), out, TrainConfig()).train()
    assert not out.exists()


def test_shipped_zero1_config_is_valid_for_accelerate():
    import accelerate

    from latentrag_plugins.training import TrainConfig
    from latentrag_plugins.training.distributed import deepspeed_config

    for mp, bf16 in (("bf16", True), ("no", False)):
        ds = deepspeed_config(TrainConfig(deepspeed="zero1", batch_size=4, max_grad_norm=0.5))
        plugin = accelerate.DeepSpeedPlugin(hf_ds_config=ds)
        plugin.set_mixed_precision(mp)
        got = plugin.deepspeed_config
        assert plugin.zero_stage == 1 and got["bf16"]["enabled"] is bf16
        assert got["train_micro_batch_size_per_gpu"] == 4 and got["gradient_clipping"] == 0.5
        assert "train_batch_size" not in got  # DeepSpeed derives it from the processes
        assert "auto" not in json.dumps(got)  # nothing left for a dataloader to fill in


@pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed's CPU ops need a compiler")
def test_deepspeed_zero1_trains_the_same_model(inputs, two_processes):
    """ZeRO-1 on two CPU processes, stopped and resumed: the same model as plain DDP."""
    pytest.importorskip("deepspeed")
    out = inputs / "zero1"
    base = ["--model", str(inputs / "init"), "--data", str(inputs / "prep"), "--out", str(out)]
    _launch([*base, *TRAIN, "--max-steps", "2", "--deepspeed", "zero1"], deepspeed=True)
    _launch([*base, *TRAIN, "--max-steps", "3", "--deepspeed", "zero1", "--resume"], deepspeed=True)
    want, got = _weights(two_processes[0]), _weights(out)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)
    state = out / "checkpoints" / "step-3" / "train_state"
    shards = sorted(p.name for p in (state / "pytorch_model").glob("zero_pp_rank_*"))
    assert len(shards) == 2  # optimizer states sharded over the two processes
    assert [r["step"] for r in _log(out)] == [1, 2, 3]

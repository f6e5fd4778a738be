"""The demo: its recipe end to end at toy scale, and checkpoint-name resolution."""

from __future__ import annotations

import json

import pytest

from latentrag_plugins.demo.assets import DEMO_CHECKPOINTS, resolve_checkpoint
from latentrag_plugins.errors import CheckpointError


@pytest.mark.slow
def test_recipe_runs_end_to_end(tmp_path):
    from latentrag_plugins.demo.recipe import run_recipe

    rep = run_recipe(tmp_path / "demo", "test")
    assert set(rep["methods"]) == {"latent", "explicit", "naive"}
    for m in rep["methods"].values():
        assert 0 <= m["em"] <= 1 and m["p50_ms"] > 0
    recipe = json.loads((tmp_path / "demo" / "recipe.json").read_text())
    assert recipe["preset"] == "test"
    assert 0 <= recipe["base_reading_em"]["all"] <= 100 and recipe["base_reading_em"]["n"] == 4
    # Both models went through a first run and a continuation run from its checkpoint.
    for name in ("latent-0", "latent", "explicit-0", "explicit"):
        assert (tmp_path / "demo" / name / "train_config.json").is_file(), name
    log = (tmp_path / "demo" / "latent" / "train_log.jsonl").read_text().splitlines()
    assert log and all("loss_ret" in json.loads(x) for x in log)


def test_demo_names_resolve(tmp_path, monkeypatch):
    assert resolve_checkpoint(tmp_path) == tmp_path
    import latentrag_plugins.demo.assets as assets

    monkeypatch.setitem(assets.DEMO_CHECKPOINTS, "demo", tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not shipped"):
        resolve_checkpoint("demo")
    assert set(DEMO_CHECKPOINTS) == {"demo", "demo-explicit"}

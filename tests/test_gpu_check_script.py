"""The prepared GPU check script runs end to end (on tiny shapes on the CPU), so it cannot rot
between sessions that have a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_script_smoke_mode_writes_every_report(tmp_path):
    pytest.importorskip("matplotlib")
    env = {**os.environ, "GPU_CHECK_SMOKE": "1", "OUT": str(tmp_path), "BUDGET_S": "400"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "bench7b.json", "bench7b.png", "checks.log", "engine.json", "search.json",
        "summary.txt", "train.json",
    ]  # fmt: skip
    assert len(files) <= 8  # what the device tool brings back
    summary = (tmp_path / "summary.txt").read_text()
    assert all(f"{name}: exit 0" in summary for name in ("search", "bench7b", "train", "engine"))
    assert set(json.loads((tmp_path / "engine.json").read_text())["methods"]) == {
        "latent",
        "explicit",
    }

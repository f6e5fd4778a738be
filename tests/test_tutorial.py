"""docs/tutorial.md runs: every shell command and Python block, at toy scale (a tiny random LLM
for the base model, the demo's explicit agent as the teacher, a slice of the demo world)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from latentrag_plugins.demo.assets import DEMO_CORPUS, DEMO_QUESTIONS

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", TUTORIAL.read_text(), flags=re.DOTALL)


def toy_world(root: Path) -> dict[str, str]:
    """A slice of the demo world, and the settings that stand in for the real ones."""
    qs = [json.loads(line) for line in DEMO_QUESTIONS.read_text().splitlines()[:11]]
    need = {i for q in qs for i in q["supporting_ids"]}
    docs = [json.loads(line) for line in DEMO_CORPUS.read_text().splitlines()]
    keep = [d for i, d in enumerate(docs) if i < 120 or d["id"] in need]
    files = {"CORPUS": keep, "TRAIN": qs[:8], "DEV": qs[8:]}
    env = {}
    for name, rows in files.items():
        path = root / f"{name.lower()}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        env[name] = str(path)
    return {
        **env,
        "BASE": "random:tiny",
        "ENCODER": "sentence-transformers/all-MiniLM-L6-v2",
        "TEACHER": "demo-explicit",
    }


@pytest.mark.slow
def test_every_tutorial_command_runs(tmp_path):
    shell = [b for b in blocks("bash") if not b.startswith(("pip install", "# settings"))]
    assert len(shell) == 4 and any("collect" in b for b in shell)
    env = {**os.environ, **toy_world(tmp_path), "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    for block in shell:
        done = subprocess.run(
            ["bash", "-ec", block], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{block}\n{done.stdout}\n{done.stderr}"
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["methods"]) == {"latent", "explicit", "naive"}
    for code in blocks("python"):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{code}\n{done.stderr}"

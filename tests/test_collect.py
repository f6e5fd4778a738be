"""``latentrag collect``: a teacher's trajectories over a store, kept when right, resumable."""

from __future__ import annotations

import json

import pytest

from latentrag_plugins.cli.main import main
from latentrag_plugins.demo.assets import DEMO_CORPUS, DEMO_QUESTIONS
from latentrag_plugins.training.collect import progress_path
from latentrag_plugins.training.trajectories import read_trajectories


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Six demo test questions, and an index of their supporting passages among 150 others."""
    root = tmp_path_factory.mktemp("collect")
    qs = [json.loads(line) for line in DEMO_QUESTIONS.read_text().splitlines()[:6]]
    need = {i for q in qs for i in q["supporting_ids"]}
    docs = [json.loads(line) for line in DEMO_CORPUS.read_text().splitlines()]
    keep = [d for i, d in enumerate(docs) if i < 150 or d["id"] in need]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in keep))
    (root / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    args = ["index", str(root / "corpus.jsonl"), str(root / "idx"), "--model", "demo-explicit"]
    assert main([*args, "--device", "cpu"]) == 0
    return root


def test_collect_keeps_right_trajectories_for_prepare(world, capsys):
    out = world / "traj.jsonl"
    args = ["collect", "--teacher", "demo-explicit", "--index", str(world / "idx")]
    assert main([*args, str(world / "q.jsonl"), str(out), "--json", "--device", "cpu"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["kept"] >= 1 and stats["kept"] + stats["dropped"] == 6
    assert set(stats["dropped_by_reason"]) <= {"wrong answer", "no answer"}
    trajs = read_trajectories(out)
    assert len(trajs) == stats["kept"] and all(t.answers and t.answer for t in trajs)
    assert any(t.steps and t.steps[0].documents and t.steps[0].subquery for t in trajs)
    assert not progress_path(out).exists()


def test_collect_resumes_an_interrupted_run(world, capsys, monkeypatch):
    from latentrag_plugins.baselines.explicit import ExplicitAgent

    out = world / "resumed.jsonl"
    first = json.loads((world / "q.jsonl").read_text().splitlines()[0])["id"]
    progress_path(out).write_text(json.dumps({"id": first, "dropped": "wrong answer"}) + "\n{")
    args = ["collect", "--teacher", "demo-explicit", "--index", str(world / "idx")]
    args += [str(world / "q.jsonl"), str(out), "--json", "--device", "cpu"]
    assert main(args) != 0
    assert "--resume" in capsys.readouterr().err and not out.exists()
    asked: list[str] = []
    run_batch = ExplicitAgent.run_batch
    monkeypatch.setattr(
        ExplicitAgent,
        "run_batch",
        lambda self, qs, *a, **k: asked.extend(qs) or run_batch(self, qs, *a, **k),
    )
    assert main([*args, "--resume"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert len(asked) == 5 and stats["kept"] + stats["dropped"] == 6  # the torn line is redone
    assert stats["dropped_by_reason"].get("wrong answer", 0) >= 1

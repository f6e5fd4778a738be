"""Smoke runs of ``latentrag bench`` and ``latentrag eval`` (no timing assertions)."""

from __future__ import annotations

import copy
import json

import pytest

from latentrag_plugins.bench.forcing import LatentForcer, spread
from latentrag_plugins.bench.runner import BenchConfig, build, run_bench
from latentrag_plugins.cli.main import main
from latentrag_plugins.evaluation.stats import percentile

STAGES = {"prefill", "reasoning", "retrieval", "answer", "decode"}


def _check_methods(methods: dict, batches: list[int]) -> None:
    assert set(methods) >= {"latent", "explicit", "naive"}
    for m in methods.values():
        for key in ("p50_ms", "p95_ms", "forward_passes", "output_tokens"):
            assert isinstance(m[key], float)
        assert set(m["stages_ms"]) == STAGES
        assert set(m["throughput_qps"]) == {str(b) for b in batches}


def test_bench_tiny_json_contract(capsys):
    code = main(
        [
            "bench",
            "--shape",
            "tiny",
            "--questions",
            "2",
            "--corpus-size",
            "500",
            "--batch",
            "1,2",
            "--json",
        ]
    )
    assert code == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["shape"] == "tiny" and isinstance(rep["machine"], dict)
    assert rep["dtype"] in ("float32", "float32+bfloat16")  # auto on CPU: as a loaded model
    _check_methods(rep["methods"], [1, 2])
    assert set(rep["ratios"]) >= {"latent_vs_explicit", "latent_vs_naive"}
    m = rep["methods"]
    # Forced to the paper's Table 8 shape: 2 steps; explicit writes ~169 tokens, latent ~6.
    assert m["latent"]["mean_steps"] == m["explicit"]["mean_steps"] == 2
    assert m["naive"]["mean_steps"] == 1
    assert m["explicit"]["output_tokens"] > 100 > m["latent"]["output_tokens"] > 0
    assert m["explicit"]["forward_passes"] == m["explicit"]["output_tokens"]
    # 3 step passes (the forced <answer> rides in the last), then one per answer token but the last.
    assert m["latent"]["forward_passes"] == 3 + m["latent"]["output_tokens"] - 1


@pytest.mark.parametrize(
    ("dtype", "name"), [("bfloat16", "bfloat16"), ("mixed", "float32+bfloat16")]
)
def test_bench_low_precision_keeps_the_forced_shape(dtype: str, name: str):
    """``--dtype bfloat16`` and ``mixed`` (CPUs with AMX): same forced actions and lengths."""
    rep = run_bench(
        BenchConfig(shape="tiny", corpus_size=300, questions=2, batches=(1,), dtype=dtype,
                    show_progress=False)
    )  # fmt: skip
    assert rep["dtype"] == name
    m = rep["methods"]
    assert m["latent"]["mean_steps"] == m["explicit"]["mean_steps"] == 2
    assert m["naive"]["mean_steps"] == 1
    assert m["explicit"]["output_tokens"] > 100 > m["latent"]["output_tokens"] > 0
    assert m["latent"]["forward_passes"] == 3 + m["latent"]["output_tokens"] - 1
    with pytest.raises(ValueError, match="unknown dtype"):
        build(BenchConfig(shape="tiny", dtype="int8"))


def test_bench_decode_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    rep = run_bench(
        BenchConfig(
            shape="tiny", corpus_size=300, questions=2, batches=(1,), decode=True,
            show_progress=False,
        )
    )  # fmt: skip
    assert rep["decode"] is True
    assert rep["methods"]["latent"]["stages_ms"]["decode"] > 0
    from latentrag_plugins.evaluation.plot import plot_stages

    plot_stages(rep["methods"], tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_latent_forcer_sets_lengths(model, store):
    forcer = LatentForcer(model)
    with forcer.plan(answer=[3, 7]):
        res = model.run_batch(["Who?", "Where is Warsaw?"], store, max_steps=1)
    assert [r.output_tokens for r in res] == [4, 8]  # + </answer>
    assert all([s.action for s in r.steps] == ["retrieve", "answer"] for r in res)
    # Hooks are gone afterwards.
    assert not model.llm.get_output_embeddings()._forward_hooks


def test_spread_and_percentile():
    assert sum(spread(5.8, i) for i in range(10)) == 58
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5 and percentile([], 50) == 0


def test_eval_smoke(model, store, tmp_path, capsys, monkeypatch):
    from latentrag_plugins.baselines.explicit import ExplicitAgent

    model.save_pretrained(tmp_path / "latent")
    store.save(tmp_path / "index")
    ExplicitAgent.init(
        copy.deepcopy(model.llm), model.doc_tower, tokenizer=copy.deepcopy(model.tokenizer),
        device="cpu", max_turn_tokens=16, max_answer_tokens=4,
    ).save_pretrained(tmp_path / "explicit")  # fmt: skip
    qs = tmp_path / "q.jsonl"
    rows = [
        {
            "id": "a",
            "question": "In which country was Marie Curie born?",
            "golden_answers": ["Poland"],
            "hops": 1,
        },
        {
            "id": "b",
            "question": "Which river flows through Vienna?",
            "golden_answers": ["Danube"],
            "hops": 2,
        },
        {
            "id": "c",
            "question": "Who founded the Nobel Prize?",
            "golden_answers": ["Alfred Nobel"],
            "hops": 2,
        },
    ]
    qs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [
        "eval", "--model", str(tmp_path / "latent"), "--index", str(tmp_path / "index"),
        "--questions", str(qs), "--baselines", f"explicit:{tmp_path / 'explicit'},naive",
        "--json", str(tmp_path / "eval.json"), "--predictions", str(tmp_path / "pred.jsonl"),
        "--batch-size", "2", "--device", "cpu", "--dtype", "bfloat16", "--max-steps", "1",
    ]  # fmt: skip
    from latentrag_plugins.baselines.explicit import ExplicitAgent

    turns, run_batch = [], ExplicitAgent.run_batch

    def spy(self, *a, **kw):
        turns.append(kw.get("max_turns"))
        return run_batch(self, *a, **kw)

    monkeypatch.setattr(ExplicitAgent, "run_batch", spy)
    assert main(args) == 0
    assert set(turns) == {1}  # --max-steps is the explicit agent's max_turns too
    out = capsys.readouterr().out
    assert "| latent |" in out and "| explicit |" in out and "| naive |" in out
    rep = json.loads((tmp_path / "eval.json").read_text())
    assert rep["n"] == 3
    from latentrag_plugins.speed.precision import cpu_has_native_bf16

    auto = "float32+bfloat16" if cpu_has_native_bf16() else "float32"  # the explicit default
    assert {k: v["dtype"] for k, v in rep["settings"].items()} == {
        "latent": "bfloat16", "naive": "bfloat16", "explicit": auto
    }  # fmt: skip
    assert not any(v["extractive_answers"] for v in rep["settings"].values())
    for name in ("latent", "explicit", "naive"):
        m = rep["methods"][name]
        for key in ("em", "f1", "retrieval_success", "mean_steps", "p50_ms", "p95_ms"):
            assert isinstance(m[key], float), (name, key)
        assert set(m["stages_ms"]) == STAGES | {"other"}
        assert m["mean_ms"] >= sum(m["stages_ms"].values()) - 1e-6
    assert {v["max_steps"] for k, v in rep["settings"].items() if k != "naive"} == {1}
    assert set(rep["by_hops"]) == {"1", "2"}
    assert rep["by_hops"]["2"]["n"] == 2
    assert set(rep["by_hops"]["2"]["methods"]) == {"latent", "explicit", "naive"}
    preds = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(preds) == 9
    retrieves = [sum(s["action"] == "retrieve" for s in p["steps"]) for p in preds]
    assert max(retrieves) <= 1  # --max-steps reaches every method
    # The naive baseline always retrieves once; its docs come from the same store.
    assert rep["methods"]["naive"]["mean_steps"] == 1.0
    meth, ratios = rep["methods"], rep["ratios"]
    want = meth["latent"]["p50_ms"] / meth["explicit"]["p50_ms"]
    assert ratios["latent_vs_explicit_p50"] == pytest.approx(want)
    assert "p50 latent/explicit" in out


def test_eval_rejects_bad_baselines():
    from latentrag_plugins.cli.cmd_eval import parse_baselines

    assert parse_baselines("explicit:/x, naive") == [("explicit", "/x"), ("naive", None)]
    with pytest.raises(ValueError, match="bad baseline"):
        parse_baselines("explicit")
    with pytest.raises(ValueError, match="bad baseline"):
        parse_baselines("searchr1:/x")


def test_bench_leaves_grad_mode_alone():
    import torch

    assert torch.is_grad_enabled()
    build(BenchConfig(shape="tiny", questions=1, corpus_size=50, show_progress=False))
    assert torch.is_grad_enabled()


def test_demo_json_report_records_each_method_settings(model, store, tmp_path, capsys):
    """``latentrag demo --json`` prints the eval report, settings included."""
    import argparse

    from latentrag_plugins.baselines.explicit import ExplicitAgent
    from latentrag_plugins.baselines.naive import NaiveRAG
    from latentrag_plugins.cli.cmd_demo import _json_report

    explicit = ExplicitAgent.init(
        copy.deepcopy(model.llm), model.doc_tower, tokenizer=copy.deepcopy(model.tokenizer),
        device="cpu", max_turn_tokens=8, max_answer_tokens=4,
    )  # fmt: skip
    qs = tmp_path / "q.jsonl"
    qs.write_text(json.dumps({"id": "a", "question": "Who?", "golden_answers": ["Ann"]}) + "\n")
    args = argparse.Namespace(limit=1)
    assert _json_report(args, model, explicit, NaiveRAG(model), store, qs) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep["methods"]) == {"latent", "explicit", "naive"}
    assert rep["settings"]["naive"]["max_steps"] == 1
    assert rep["settings"]["explicit"]["max_steps"] == explicit.config.max_turns


def test_bench_concurrency_reports_every_level(tmp_path, capsys):
    from latentrag_plugins.cli.main import main

    out = tmp_path / "conc.json"
    args = [
        "bench", "--concurrency", "1,3", "--rounds", "1", "--shape", "tiny",
        "--corpus-size", "300", "--steps", "1", "--json", str(out), "--device", "cpu",
    ]  # fmt: skip
    assert main(args) == 0
    rep = json.loads(out.read_text())
    assert rep["levels"] == [1, 3] and set(rep["methods"]) == {"latent", "explicit"}
    for rows in rep["methods"].values():
        assert set(rows) == {"1", "3"}
        for row in rows.values():
            assert row["qps"] > 0 and row["p95_ms"] >= row["p50_ms"] > 0
            assert row["mean_batch"] >= 1 and row["run_batch_qps"] > 0
        assert rows["1"]["vs_one_client"] == 1.0
    assert "| latent | 3 |" in capsys.readouterr().out
    assert main(["bench", "--model", "demo"]) != 0
    assert "--model goes with --concurrency" in capsys.readouterr().err

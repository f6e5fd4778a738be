"""The demo: its recipe end to end at toy scale, and checkpoint-name resolution."""

from __future__ import annotations

import json
import time

import pytest
import torch

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
    # Both models went through a first run and continuation runs from its checkpoint; the last
    # run of LatentRAG trained on the world plus one renamed copy, the explicit agent's on two.
    for name in ("latent-0", "latent-1", "latent", "explicit-0", "explicit-1", "explicit"):
        assert (tmp_path / "demo" / name / "train_config.json").is_file(), name
    prep = json.loads((tmp_path / "demo" / "prep" / "manifest.json").read_text())
    renamed = json.loads((tmp_path / "demo" / "prep-renamed-1" / "manifest.json").read_text())
    assert renamed["trajectories"] == 2 * prep["trajectories"] and renamed["beta"] == prep["beta"]
    assert not (tmp_path / "demo" / "prep-renamed-2").exists()  # the explicit agent needs none
    examples = {
        name: json.loads((tmp_path / "demo" / name / "summary.json").read_text())["examples"]
        for name in ("latent-1", "latent", "explicit-1", "explicit")
    }
    assert examples["latent"] == 2 * examples["latent-1"] > 0
    assert examples["explicit"] == 3 * examples["explicit-1"] > 0
    last = json.loads((tmp_path / "demo" / "latent" / "train_config.json").read_text())
    assert (last["batch_size"], last["warmup_ratio"], last["lr"]) == (4, 0.5, 3e-4)
    log = (tmp_path / "demo" / "latent" / "train_log.jsonl").read_text().splitlines()
    assert log and all("loss_ret" in json.loads(x) for x in log)


def test_demo_names_resolve(tmp_path, monkeypatch):
    assert resolve_checkpoint(tmp_path) == tmp_path
    import latentrag_plugins.demo.assets as assets

    monkeypatch.setitem(assets.DEMO_CHECKPOINTS, "demo", tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not shipped"):
        resolve_checkpoint("demo")
    assert set(DEMO_CHECKPOINTS) == {"demo", "demo-explicit"}


@pytest.mark.slow
def test_shipped_demo_model_answers_a_3_hop_test_question():
    """The packaged checkpoint loads and still reasons: three latent retrievals, right answer."""
    from latentrag_plugins import LatentRAG
    from latentrag_plugins.demo.assets import DEMO_CORPUS, DEMO_QUESTIONS
    from latentrag_plugins.store.corpus import read_corpus
    from latentrag_plugins.store.faiss_store import FaissStore

    q = next(
        json.loads(line)
        for line in DEMO_QUESTIONS.read_text().splitlines()
        if json.loads(line)["id"] == "test-00012"
    )
    model = LatentRAG.from_pretrained("demo", device="cpu")
    docs = list(read_corpus(DEMO_CORPUS))
    # The question's three supporting passages among 60 others.
    keep = [d for d in docs if d.id in set(q["supporting_ids"])] + docs[:60]
    store = FaissStore.build(model.doc_tower, keep, show_progress=False)
    res = model.run(q["question"], store, decode=True)
    assert [s.action for s in res.steps] == ["retrieve"] * 3 + ["answer"]
    found = {d.id for s in res.steps for d in s.docs}
    assert set(q["supporting_ids"]) <= found
    assert res.answer.lower() == q["golden_answers"][0].lower()
    assert all(s.thought for s in res.steps)  # decoded thoughts for every step


def test_demo_question_shows_the_gold_answer_of_a_test_question():
    from latentrag_plugins.cli.cmd_demo import with_gold
    from latentrag_plugins.demo.assets import DEMO_QUESTIONS
    from latentrag_plugins.evaluation import read_questions

    test = read_questions(DEMO_QUESTIONS)
    q = "in which city was  the director of Lardave born? "
    assert with_gold(q, test) == (q, ("Soukarholm",))
    assert with_gold("Who directed Jaws?", test) == ("Who directed Jaws?", None)


def test_index_cache_is_reused_and_keyed_by_the_tower(model, tmp_path, monkeypatch, capsys):
    from latentrag_plugins.demo import index_cache

    monkeypatch.setenv("LATENTRAG_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "contents": f"Town {i}\\nTown {i} lies on river {i}."})
            + "\n"
            for i in range(5)
        )
    )
    first = index_cache.cached_index(model, corpus)
    assert len(first) == 5 and len(list((tmp_path / "cache").iterdir())) == 1
    assert "building the index of corpus.jsonl once" in capsys.readouterr().err
    index_cache.cached_index(model, corpus)  # loaded, not rebuilt
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert "building" not in capsys.readouterr().err
    bias = model.doc_tower.encoder.encoder.layer[0].output.dense.bias
    with torch.no_grad():
        bias.add_(0.5)  # e.g. a checkpoint whose retriever was fine-tuned, same encoder id
    try:
        index_cache.cached_index(model, corpus)
    finally:
        with torch.no_grad():
            bias.sub_(0.5)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_auto_dtype_is_mixed_on_cpus_with_native_bf16(monkeypatch):
    """`--dtype auto`, and from_pretrained's default, run each model at its fastest: mixed
    precision where the CPU has native bfloat16, float32 on other CPUs, bfloat16 on GPUs."""
    import torch

    from latentrag_plugins.devices import auto_dtypes
    from latentrag_plugins.speed import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert auto_dtypes(torch.device("cpu")) == (torch.float32, torch.bfloat16)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert auto_dtypes(torch.device("cpu")) == (torch.float32, None)


def test_cpu_bf16_probe_answers_without_raising():
    from latentrag_plugins.speed.precision import cpu_has_native_bf16

    assert isinstance(cpu_has_native_bf16(), bool)


def test_index_cache_prunes_long_unused_indexes(model, tmp_path, monkeypatch):
    """Building an index deletes cached indexes unused for 30 days, and what interrupted
    deletes and (day-old) builds left; loading one marks it used; anything not named as the
    cache names its directories stays, even a store of the user's."""
    import os

    from latentrag_plugins.demo import index_cache

    cache = tmp_path / "cache"
    monkeypatch.setenv("LATENTRAG_CACHE", str(cache))
    old = time.time() - 40 * 86400
    stale, other = cache / f"index-{'0' * 16}-{'a' * 12}", cache / "index-wiki"
    for d in (stale, other):
        d.mkdir(parents=True)
        (d / "manifest.json").write_text("{}")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "d0", "contents": "Town\\nTown lies on a river."}) + "\n")
    index_cache.cached_index(model, corpus)
    (built,) = [d for d in cache.iterdir() if d not in (stale, other)]
    for d in (stale, other, built):
        os.utime(d, (old, old))
    index_cache.cached_index(model, corpus)  # a load: marks it used, prunes nothing
    assert built.stat().st_mtime > old + 86400 and stale.exists()
    corpus.write_text(json.dumps({"id": "d1", "contents": "City\\nCity lies by the sea."}) + "\n")
    name = f"index-{'1' * 16}-{'b' * 12}"
    trash, partial, recent = (cache / n for n in (f".trash-{name}-7", f".{name}.x1", f".{name}.x2"))
    mine = cache / ".index-mine"
    for d in (trash, partial, recent, mine):
        (d / "tmp").mkdir(parents=True)
    for d in (partial, mine):
        os.utime(d, (old, old))
    index_cache.cached_index(model, corpus)  # a build: prunes
    assert not stale.exists() and other.exists() and built.exists()
    assert not trash.exists() and not partial.exists() and recent.exists() and mine.exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".trash")]


def test_demo_names_work_in_ask_and_index(tmp_path, capsys):
    """``--model demo-explicit`` (and ``demo``) work in ``index`` and ``ask``: ``ask`` runs the
    explicit agent, whose thoughts are text; where a LatentRAG model is needed, the explicit
    checkpoint is refused with a message that says what it is."""
    from latentrag_plugins import LatentRAG
    from latentrag_plugins.cli.main import main
    from latentrag_plugins.demo.assets import DEMO_CORPUS

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(DEMO_CORPUS.read_text().splitlines(keepends=True)[:40]))
    title = json.loads(corpus.read_text().splitlines()[0])["contents"].split("\n")[0]
    for name in ("demo", "demo-explicit"):
        assert main(["index", str(corpus), str(tmp_path / name), "--model", name]) == 0
    capsys.readouterr()
    question = f"What is known about {title}?"
    idx = str(tmp_path / "demo-explicit")
    assert main(["ask", "--model", "demo-explicit", "--index", idx, question, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["answer"] and res["steps"] and all(s["thought"] for s in res["steps"])
    assert main(["ask", "--model", "demo-explicit", "--index", idx, "--logit-lens", "Q?"]) == 1
    assert "explicit agent has none" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="holds an explicit agent"):
        LatentRAG.from_pretrained("demo-explicit")

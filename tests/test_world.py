"""Tests for the fictional world generator (latentrag_plugins.world) and `latentrag world`."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from latentrag_plugins.world import (
    build_dataset,
    check_answerable,
    check_split_disjoint,
    find_fact,
    generate_trajectories,
    lexical_search_fn,
    write_dataset,
)
from latentrag_plugins.world.entities import HUB_KINDS, LATEST_YEAR
from latentrag_plugins.world.names import _BLOCKLIST
from latentrag_plugins.world.oracle import CUE_WORDS
from latentrag_plugins.world.questions import KINDS

FILES = ("corpus.jsonl", "questions_train.jsonl", "questions_dev.jsonl", "questions_test.jsonl",
         "trajectories.jsonl", "entities.jsonl", "world.json")  # fmt: skip


def _has(text: str, s: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(s)}(?!\w)", text) is not None


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def ds():
    return build_dataset(0, "small")


@pytest.fixture(scope="module")
def out(ds, tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    write_dataset(ds, d)
    return d


@pytest.fixture(scope="module")
def records(ds):
    return {split: [q.record for q in qs] for split, qs in ds.questions.items()}


def test_small_is_fast():
    t = time.perf_counter()
    build_dataset(7, "small")
    assert time.perf_counter() - t < 2.0


def test_same_seed_gives_identical_files(out, tmp_path):
    again = tmp_path / "again"
    write_dataset(build_dataset(0, "small"), again)
    for name in FILES:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    write_dataset(build_dataset(1, "small"), other)
    assert (out / "corpus.jsonl").read_bytes() != (other / "corpus.jsonl").read_bytes()


def test_identical_across_processes(out, tmp_path):
    code = (
        "from latentrag_plugins.world import build_dataset, write_dataset;"
        f"write_dataset(build_dataset(0, 'small'), {str(tmp_path)!r})"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).parents[1])
    for name in FILES:
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_split_subjects_disjoint(ds, records):
    assert check_split_disjoint(records) == []
    train_subjects = {s for q in records["train"] for s in q["meta"]["subject_ids"]}
    for split in ("dev", "test"):
        for q in records[split]:
            for sid in q["meta"]["subject_ids"]:
                assert sid not in train_subjects
                assert ds.world[sid].split == split
            for step in q["meta"]["steps"]:  # non-hub bridges stay in the split too
                if step["entity_id"].split("-")[0] not in HUB_KINDS:
                    assert ds.world[step["entity_id"]].split == split


def test_disjointness_checker_catches_leak(records):
    leaked = copy.deepcopy(records)
    q = copy.deepcopy(leaked["test"][0])
    q["id"] = "train-leak"
    leaked["train"].append(q)
    problems = check_split_disjoint(leaked)
    assert problems and any("train question" in p or "also in" in p for p in problems)


def test_every_question_is_answerable(ds, records):
    docs = ds.corpus.by_id()
    for split, qs in records.items():
        assert check_answerable(qs, docs) == [], split
        for q in qs:
            sup = [docs[i]["contents"] for i in q["supporting_ids"]]
            steps = q["meta"]["steps"]
            if q["meta"]["kind"] == "comparison":
                assert q["golden_answers"][0] in {s["entity"] for s in steps}
                for text, s in zip(sup, steps, strict=True):
                    assert _has(text, s["value"]) and text.split("\n")[0] == s["entity"]
                continue
            assert _has(sup[-1], q["golden_answers"][0])
            for i in range(len(steps) - 1):  # bridge i is found in passage i, is passage i+1
                bridge = steps[i]["value"]
                assert _has(sup[i], bridge)
                assert sup[i + 1].split("\n")[0] == bridge


def test_answerability_checker_catches_wrong_answer(ds, records):
    q = copy.deepcopy(records["train"][0])
    q["golden_answers"] = ["Nowhere"]
    assert check_answerable([q], ds.corpus.by_id())


def test_kinds_balanced_and_questions_unique(records):
    per_kind = {"train": 50, "dev": 10, "test": 10}
    texts = [q["question"] for qs in records.values() for q in qs]
    assert len(texts) == len(set(texts))
    for split, qs in records.items():
        counts = Counter(q["meta"]["kind"] for q in qs)
        assert counts == dict.fromkeys(KINDS, per_kind[split]), (split, counts)
        assert Counter(q["hops"] for q in qs)[3] == per_kind[split]


def test_facts_stated_once_and_never_contradicted(ds):
    w, c = ds.world, ds.corpus
    docs = c.by_id()
    for (eid, rel), doc_id in c.fact_doc.items():
        assert find_fact([docs[doc_id]], w[eid].name, rel, w.value_text(eid, rel)) == doc_id
    for eid in w.entities:  # every relation of every entity is stated somewhere
        for rel in w.relations_of(eid):
            assert (eid, rel) in c.fact_doc, (eid, rel)
    mentions = defaultdict(list)
    for d in c.docs:
        for e in w.entities.values():
            if e.name in d["contents"]:
                mentions[e.id].append(d)
    values = defaultdict(set)
    for e in w.entities.values():
        for rel in w.relations_of(e.id):
            values[rel].add(w.value_text(e.id, rel))
    for e in w.entities.values():
        for rel in w.relations_of(e.id):
            wrong = sorted(values[rel] - {w.value_text(e.id, rel), e.name})
            for v in wrong:
                assert find_fact(mentions[e.id], e.name, rel, v) is None, (e.name, rel, v)


def test_chronology(ds):
    w = ds.world
    born = {p.id: p.facts["birth_year"] for p in w.of_kind("person")}
    for o in w.of_kind("organisation"):
        assert 22 <= o.facts["founded_year"] - born[o.facts["founder"]] <= 60
    for f in w.of_kind("film"):
        assert 22 <= f.facts["release_year"] - born[f.facts["director"]] <= 65
        assert 8 <= f.facts["release_year"] - born[f.facts["star"]] <= 70
        assert f.facts["release_year"] <= LATEST_YEAR
    for b in w.of_kind("book"):
        assert 20 <= b.facts["publication_year"] - born[b.facts["author"]] <= 75
        assert b.facts["publication_year"] >= w[b.facts["publisher"]].facts["founded_year"]
    for p in w.of_kind("person"):
        if "spouse" in p.facts:
            assert w[p.facts["spouse"]].facts["spouse"] == p.id != p.facts["spouse"]


def test_names_unique_and_not_nested(ds):
    names = [e.name for e in ds.world.entities.values()]
    assert len(names) == len(set(names))
    surnames_and_words = Counter()
    for e in ds.world.entities.values():
        if e.kind in ("city", "country"):
            surnames_and_words[e.name] += 1
        if e.kind == "person":
            surnames_and_words[e.name.split()[-1]] += 1
    assert max(surnames_and_words.values()) == 1
    joined = "\n".join(names)
    for n in names:
        assert len(re.findall(rf"(?<!\w){re.escape(n)}(?!\w)", joined)) == 1, n
    assert CUE_WORDS <= _BLOCKLIST


def test_file_schemas(out, ds):
    for name in FILES:
        assert (out / name).is_file()
    corpus = _read_jsonl(out / "corpus.jsonl")
    assert 200 <= len(corpus) <= 600
    assert len({d["id"] for d in corpus}) == len(corpus)
    names = {e.name for e in ds.world.entities.values()}
    for d in corpus:
        assert set(d) == {"id", "contents"}
        title, body = d["contents"].split("\n", 1)
        assert title in names and body.strip()
    ids = {d["id"] for d in corpus}
    all_q = {}
    for split in ("train", "dev", "test"):
        for q in _read_jsonl(out / f"questions_{split}.jsonl"):
            assert {"id", "question", "golden_answers", "hops", "supporting_ids"} <= set(q)
            assert q["id"].startswith(split + "-") and q["id"] not in all_q
            assert isinstance(q["hops"], int) and q["hops"] == len(q["supporting_ids"])
            assert 1 <= q["hops"] <= 3 and set(q["supporting_ids"]) <= ids
            assert q["golden_answers"] and all(
                isinstance(a, str) and a for a in q["golden_answers"]
            )
            assert len(q["golden_answers"][0].split()) <= 6  # short answers
            all_q[q["id"]] = q
    trajs = _read_jsonl(out / "trajectories.jsonl")
    assert len(trajs) == len({t["id"] for t in trajs})
    for t in trajs:
        assert set(t) == {"id", "question", "answers", "steps", "final_thought", "answer"}
        q = all_q[t["id"]]
        assert t["id"].startswith("train-") and t["question"] == q["question"]
        assert t["answer"] in t["answers"] == q["golden_answers"]
        assert 1 <= len(t["steps"]) <= 4 and t["final_thought"].strip()
        for step in t["steps"]:
            assert set(step) == {"thought", "subquery", "documents"}
            assert step["thought"].strip() and step["subquery"].strip()
            assert all(set(d) == {"id", "contents"} and d["id"] in ids for d in step["documents"])
    summary = json.loads((out / "world.json").read_text())
    assert summary["seed"] == 0 and summary["size"] == "small"
    assert summary["passages"] == len(corpus)
    assert summary["questions"]["train"]["total"] == len(ds.questions["train"])
    assert summary["trajectories"]["kept"] == len(trajs)
    assert summary["trajectories"]["kept"] + summary["trajectories"]["dropped"] == len(
        ds.questions["train"]
    )


def test_oracle_reads_only_retrieved_text(ds):
    qs = ds.questions["train"][:40]
    kept, stats = generate_trajectories(qs, ds.world, lambda text, k: [], seed=0)
    assert kept == [] and stats["dropped"] == len(qs)

    search = lexical_search_fn(ds.corpus.docs)
    calls = Counter()

    def flaky(text: str, k: int) -> list[dict]:  # the first try of every hop misses
        calls["n"] += 1
        return [] if calls["n"] % 2 else search(text, k)

    kept, stats = generate_trajectories(qs, ds.world, flaky, seed=0)
    assert stats["retries"] > 0 and stats["kept"] + stats["dropped"] == len(qs)
    for t in kept:
        assert len(t["steps"]) <= 4
        assert any("search" in s["thought"] or "query" in s["thought"] for s in t["steps"][1:])
    assert stats["dropped_by_kind"].get("3hop", 0) > 0  # 3 hops x 2 tries > 4 steps


def test_lexical_search(ds):
    search = lexical_search_fn(ds.corpus.docs)
    film = ds.world.of_kind("film")[0]
    hits = search(f"director of {film.name}", 3)
    assert len(hits) == 3 and hits[0]["contents"].split("\n")[0] == film.name
    assert hits == search(f"director of {film.name}", 3)
    assert search("zzzqqq", 3) == [] and search("", 3) == []


def test_minilm_search_finds_the_entity_passage():
    from latentrag_plugins.world import build_dataset
    from latentrag_plugins.world.search import minilm_available, minilm_search_fn

    assert minilm_available()
    docs = build_dataset(seed=0, size="small").corpus.docs[:60]
    search = minilm_search_fn(docs)
    hits = 0
    for d in docs[:20]:
        title = d["contents"].split("\n", 1)[0]
        top = search(f"what is known about {title}", 3)
        assert len(top) == 3 and top[0]["score"] >= top[-1]["score"]
        hits += d["id"] in {h["id"] for h in top}
    assert hits >= 16


def test_cli_smoke(tmp_path, capsys):
    from latentrag_plugins.cli.main import main

    out = tmp_path / "w"
    assert main(["world", "--seed", "0", "--out", str(out), "--size", "small",
                 "--search", "lexical"]) == 0  # fmt: skip
    for name in FILES:
        assert (out / name).is_file()
    capsys.readouterr()
    assert main(["world", "--seed", "0", "--out", str(out), "--size", "small", "--search",
                 "lexical", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["search"] == "lexical" and summary["questions"]["test"]["total"] == 40


def test_renamed_copy_changes_every_name_and_keeps_the_facts(out, tmp_path):
    from latentrag_plugins.world.renaming import write_renamed_copy

    counts = write_renamed_copy(out, out / "trajectories.jsonl", tmp_path / "r", seed=5)
    ents = _read_jsonl(out / "entities.jsonl")
    corpus, renamed = (
        _read_jsonl(out / "corpus.jsonl"),
        _read_jsonl(tmp_path / "r" / "corpus.jsonl"),
    )
    trajs = _read_jsonl(out / "trajectories.jsonl")
    new_trajs = _read_jsonl(tmp_path / "r" / "trajectories.jsonl")
    assert counts == {"names": len(ents), "documents": len(corpus), "trajectories": len(trajs)}
    assert [d["id"] for d in renamed] == ["r5-" + d["id"] for d in corpus]
    text = "\n".join(d["contents"] for d in renamed)
    assert not [e["name"] for e in ents if _has(text, e["name"])]
    # Same facts: each renamed answer sits in the renamed documents where the old one sat.
    for old, new in zip(trajs, new_trajs):
        assert new["id"] == "r5-" + old["id"] and len(new["steps"]) == len(old["steps"])
        docs = " ".join(d["contents"] for s in old["steps"] for d in s["documents"])
        new_docs = " ".join(d["contents"] for s in new["steps"] for d in s["documents"])
        for a, b in zip(old["answers"], new["answers"]):
            assert (a in docs) == (b in new_docs)
    again = write_renamed_copy(out, out / "trajectories.jsonl", tmp_path / "again", seed=5)
    assert again == counts
    assert (tmp_path / "again" / "corpus.jsonl").read_text() == (
        tmp_path / "r" / "corpus.jsonl"
    ).read_text()

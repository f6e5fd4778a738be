"""The default thread count: one intra-op thread on small machines, the user's choice always,
set in the OS thread that runs the model."""

from __future__ import annotations

import threading

import pytest
import torch

from latentrag_plugins import threads


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A machine with ``cpus`` CPUs in the affinity mask and an optional cgroup quota."""
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "CGROUP_ROOT", tmp_path)

    def make(cpus: int, quota: str | None = None) -> None:
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cpus)))
        (tmp_path / "cpu.max").unlink(missing_ok=True)
        if quota is not None:
            (tmp_path / "cpu.max").write_text(quota)

    return make


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_usable_cpus_follow_affinity_and_the_cgroup_quota(machine):
    machine(16)
    assert threads.available_cpus() == 16
    machine(16, "max 100000")
    assert threads.available_cpus() == 16
    machine(16, "150000 100000")  # a container limited to 1.5 CPUs
    assert threads.available_cpus() == 2


def test_small_machines_get_one_thread_big_ones_keep_torchs_default(machine, restore_threads):
    machine(2)
    assert threads.default_threads() == 1
    machine(64, "200000 100000")
    assert threads.default_threads() == 1
    torch.set_num_threads(4)
    machine(16)
    assert threads.default_threads() is None
    machine(16, "300000 100000")  # never more threads than the quota's CPUs
    assert threads.default_threads() == 3


def test_the_users_choice_wins(machine, monkeypatch):
    machine(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.default_threads() == 2
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.default_threads() == 3
    monkeypatch.setenv(threads.ENV, "many")  # not a count: ignored
    assert threads.default_threads() == 2
    assert threads.build_threads() == 2


def test_apply_default_sets_the_calling_os_threads_count(machine, restore_threads):
    """torch's count is per OS thread once it has run torch work: a worker that calls
    apply_default gets it, whatever the main thread set."""
    machine(2)
    torch.set_num_threads(2)
    started, main_done = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def worker() -> None:
        torch.ones(4).sum()  # this thread now has its own count (2)
        started.set()
        main_done.wait(timeout=60)
        seen["before"] = torch.get_num_threads()
        seen["applied"] = threads.apply_default()
        seen["after"] = torch.get_num_threads()

    t = threading.Thread(target=worker)
    t.start()
    started.wait(timeout=60)
    torch.set_num_threads(2)  # the main thread's setting does not reach the worker
    main_done.set()
    t.join(timeout=60)
    assert seen == {"before": 2, "applied": 1, "after": 1}


def test_using_restores_the_count(restore_threads):
    torch.set_num_threads(1)
    with threads.using(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1
    with threads.using(None):
        assert torch.get_num_threads() == 1


def test_builds_use_every_cpu_unless_a_small_machine_is_busy(machine, monkeypatch):
    machine(2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.3, 0.3, 0.3))
    assert threads.build_threads() == 2
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.5, 2.0, 1.0))
    assert threads.build_threads() == 1
    machine(8)
    assert threads.build_threads() == 8
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.build_threads() == 2


def test_apart_runs_cpu_work_in_a_short_lived_thread_with_the_callers_count(restore_threads):
    torch.set_num_threads(1)
    seen = {}

    def work():
        seen.update(thread=threading.get_ident(), n=torch.get_num_threads())
        return "done"

    assert threads.apart(work) == "done"
    assert seen == {"thread": seen["thread"], "n": 1} and seen["thread"] != threading.get_ident()
    # Off a CPU (a GPU's current device is per thread), or for an unknown device: here.
    for device in ("meta", object()):
        threads.apart(work, device)
        assert seen["thread"] == threading.get_ident()

    class Broken(Exception):
        pass

    def fail():
        raise Broken("from the worker")

    with pytest.raises(Broken, match="from the worker"):
        threads.apart(fail)


def test_loading_and_embedding_a_corpus_run_apart(tokenizer, tmp_path, monkeypatch):
    """A model's load and a corpus's embedding leave no OpenMP pool in the caller's thread:
    their torch work runs in another OS thread, and the results are the same."""
    from latentrag_plugins import LatentRAG
    from latentrag_plugins.encoder import EncoderTower
    from latentrag_plugins.store.corpus import CorpusDoc
    from latentrag_plugins.store.faiss_store import FaissStore
    from tests.conftest import make_model

    model = make_model(tokenizer, "tiny")
    model.save_pretrained(tmp_path / "m")
    where = {}
    to_device, embed = LatentRAG.to_device, EncoderTower.embed_documents

    def spy_to_device(self, *args, **kwargs):
        where["load"] = threading.get_ident()
        return to_device(self, *args, **kwargs)

    def spy_embed(self, *args, **kwargs):
        where["embed"] = threading.get_ident()
        return embed(self, *args, **kwargs)

    monkeypatch.setattr(LatentRAG, "to_device", spy_to_device)
    monkeypatch.setattr(EncoderTower, "embed_documents", spy_embed)
    loaded = LatentRAG.from_pretrained(tmp_path / "m", device="cpu", dtype=torch.float32)
    docs = [CorpusDoc(id=str(i), text=f"passage number {i}") for i in range(5)]
    store = FaissStore.build(loaded.doc_tower, docs, show_progress=False)
    here = threading.get_ident()
    assert where["load"] != here and where["embed"] != here
    assert len(store) == 5
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)

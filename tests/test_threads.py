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

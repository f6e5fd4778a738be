"""How many CPU threads torch uses, by default, for LatentRAG's small, latency-bound passes.

On a machine with few CPUs, torch's default (one intra-op thread per core) turns a busy box into
a slow one: its OpenMP threads wait at the end of every operator for a sibling that another
process has descheduled, so a pass of a few hundred small operators takes a scheduler slice per
operator (the demo model's ``run``: about 0.1 s idle, over 1 s with one other busy process, on 2
cores). One thread has no sibling to wait for: the other process only takes its share of the CPU.
``docs/usage.md`` has the figures.

torch's thread count belongs to each OS thread once that thread has run torch work: set it in the
thread that runs the model (:func:`apply_default` there), not only in the main thread.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ENV = "LATENTRAG_THREADS"  # the user's choice of intra-op threads, which always wins
SMALL_MACHINE_CPUS = 2  # at most this many usable CPUs: one thread by default
CGROUP_ROOT = Path("/sys/fs/cgroup")  # where the process's CPU quota is read


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota
    (a container limited to 2 CPUs on a 64-core host has 2)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, quota) if quota else cpus)


def _cgroup_quota() -> int | None:
    """The cgroup CPU limit in whole CPUs (rounded up), or None when there is none."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = (CGROUP_ROOT / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else math.ceil(int(quota) / int(period))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        base = CGROUP_ROOT / "cpu"
        quota_us = int((base / "cpu.cfs_quota_us").read_text())
        period_us = int((base / "cpu.cfs_period_us").read_text())
        return math.ceil(quota_us / period_us) if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def user_threads() -> int | None:
    """The thread count the user asked for: ``$LATENTRAG_THREADS``, else ``$OMP_NUM_THREADS``
    (which torch reads itself); None when neither is set to a positive integer."""
    for name in (ENV, "OMP_NUM_THREADS"):
        try:
            value = int(os.environ.get(name, ""))
        except ValueError:
            continue
        if value > 0:
            return value
    return None


def default_threads() -> int | None:
    """The intra-op thread count LatentRAG's inference picks: the user's
    (:func:`user_threads`), else 1 on a machine with at most :data:`SMALL_MACHINE_CPUS` usable
    CPUs, else the usable CPUs where torch would use more (a container's CPU quota), else None
    (torch's own default is kept)."""
    chosen = user_threads()
    if chosen is not None:
        return chosen
    cpus = available_cpus()
    if cpus <= SMALL_MACHINE_CPUS:
        return 1
    import torch

    return cpus if torch.get_num_threads() > cpus else None


def apply_default() -> int:
    """Set torch's intra-op threads to :func:`default_threads` in the calling OS thread (and for
    threads that have not run torch work yet), and FAISS's when it is loaded.

    Call it in the thread that runs the model, before its first pass. Idempotent and cheap.

    Returns:
        The thread count now in effect in this thread.
    """
    import torch

    want = default_threads()
    if want is not None:
        set_threads(want)
    return torch.get_num_threads()


def set_threads(n: int) -> None:
    """Set torch's intra-op threads (and FAISS's OpenMP threads, when FAISS is loaded) to ``n``
    in the calling OS thread."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    faiss = sys.modules.get("faiss")
    if faiss is not None and hasattr(faiss, "omp_set_num_threads"):
        faiss.omp_set_num_threads(n)


@contextlib.contextmanager
def using(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads in this OS thread (None: as they are), then
    restore the count it had."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        set_threads(n)
    try:
        yield
    finally:
        if n is not None:
            set_threads(before)


def build_threads() -> int:
    """Intra-op threads for batched, throughput-bound work such as embedding a corpus: the
    user's choice, else every usable CPU, except on a small machine that is already busy (a
    1-minute load average of 1 or more), where one thread is faster: waiting at every operator
    for a descheduled sibling costs more than a second thread gains (``docs/usage.md``)."""
    chosen = user_threads()
    if chosen is not None:
        return chosen
    cpus = available_cpus()
    if cpus <= SMALL_MACHINE_CPUS and _load_average() >= 1.0:
        return 1
    return cpus


def _load_average() -> float:
    """The 1-minute load average (0 where the system does not tell)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0

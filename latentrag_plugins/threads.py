"""How many CPU threads torch uses, by default, for LatentRAG's small, latency-bound passes.

On a machine with few CPUs, torch's default (one intra-op thread per core) turns a busy box into
a slow one: its OpenMP threads wait at the end of every operator for a sibling that another
process has descheduled, so a pass of a few hundred small operators takes a scheduler slice per
operator (the demo model's ``run``: about 0.1 s idle, over 1 s with one other busy process, on 2
cores). One thread has no sibling to wait for: the other process only takes its share of the CPU.
``docs/usage.md`` has the figures.

torch's thread count belongs to each OS thread once that thread has run torch work: set it in the
thread that runs the model (:func:`apply_default` there), not only in the main thread.

So does torch's OpenMP thread pool, which lives as long as the thread that started it. While the
caller's thread keeps a pool, libgomp counts more threads than CPUs and stops spinning between
operators in the engine's pool too, so every later pass is slower (the demo model with 2
threads on 2 cores: 57 -> 37 ms per question in mixed precision, 63 -> 50 ms in float32). One-off
heavy work the library does for the caller (loading a model, embedding a corpus) therefore runs
:func:`apart`, in a short-lived thread.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

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


def apart(fn: Callable[[], T], device: Any = "cpu") -> T:
    """``fn()``, run in a short-lived OS thread with this thread's torch thread count, so that
    the OpenMP pool its CPU work starts ends with it (see the module docstring).

    Args:
        fn: The work; its exception is raised here.
        device: Where the work computes. Off a CPU, or where it is not a torch device, ``fn``
            runs in the calling thread (a GPU's current device is set per thread).
    """
    import torch

    try:
        on_cpu = torch.device(device).type == "cpu"
    except (TypeError, ValueError, RuntimeError):  # not a torch device: leave it be
        on_cpu = False
    if not on_cpu:
        return fn()
    n = torch.get_num_threads()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            set_threads(n)
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller
            box["error"] = exc

    worker = threading.Thread(target=work, name="latentrag-apart", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


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

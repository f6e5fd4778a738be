"""Store search micro-benchmark: FAISS single and batched searches against the matrix-product
search (torch, on the CPU and on a GPU) and the embedded store's own choice, over random unit
vectors.

Without faiss installed (e.g. on a GPU machine) the FAISS rows are left out and the torch float32
search on the CPU is the reference that the other paths' results are compared with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..store.placement import place_search
from ..store.torch_search import TorchSearch
from .runner import machine_info


def random_unit_vectors(n: int, dim: int, seed: int = 0, chunk: int = 1 << 16) -> np.ndarray:
    """``n`` random L2-normalised float32 vectors of dimension ``dim``, shape (n, dim)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)  # (n, dim)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)  # (c, dim)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def search_bench(
    n: int = 100_000,
    dim: int = 384,
    batch_sizes: Sequence[int] = (1, 4, 8, 32),
    *,
    k: int = 5,
    device: str = "auto",
    dtype: str | None = None,
    threads: int | None = None,
    repeats: int = 7,
    seed: int = 0,
) -> dict[str, Any]:
    """Time exact top-``k`` searches of batches of queries over ``n`` random unit vectors.

    Paths, each timed per batch size (median of ``repeats`` interleaved runs, after a warm-up):

    * ``faiss_batch``: FAISS ``IndexFlatIP.search`` with the whole batch (needs faiss);
    * ``faiss_singles``: FAISS searching the batch's queries one by one (needs faiss);
    * ``torch_cpu``: the float32 matrix-product search on the CPU;
    * ``torch_gpu``: the matrix-product search on the GPU in ``dtype`` (when ``device`` is one);
    * ``store``: ``FaissStore.search_batch`` placed on ``device`` (needs faiss), documents
      included.

    Args:
        n: Vectors in the corpus.
        dim: Their dimension.
        batch_sizes: Queries per batch.
        k: Results per query.
        device: Where the GPU paths run: ``"auto"`` (CUDA when available), ``"cpu"`` (none),
            ``"cuda"`` or ``"cuda:i"``.
        dtype: The vectors' dtype on the GPU (None: float16).
        threads: CPU threads for torch and FAISS during the run (None: leave as they are).
        repeats: Timed runs per path and batch size.
        seed: Seed of the random vectors and queries.

    Returns:
        A JSON-able dict: ``n``, ``dim``, ``k``, ``batch_sizes``, ``repeats``, ``threads`` (torch's
        during the run), ``gpu_device`` (None without one), ``gpu_dtype``, ``gpu_copy_ms`` (the
        time to copy the vectors there), ``store_device``,
        ``machine`` (CPU, GPU, versions), ``timings_ms`` (path -> batch size as a string -> median
        milliseconds per call), ``best_ms`` (the same, fastest call: less noisy on a busy
        machine), ``reference`` (``"faiss"`` or ``"torch_cpu"``) and ``agreement``
        (path -> share of the reference's top-k ids it returned, over every batch size).
    """
    faiss = _faiss_or_none()
    before = torch.get_num_threads(), faiss.omp_get_max_threads() if faiss else None
    if threads is not None:
        torch.set_num_threads(threads)
        if faiss is not None:
            faiss.omp_set_num_threads(threads)
    try:
        return _run(n, dim, batch_sizes, k, device, dtype, repeats, seed, faiss)
    finally:
        torch.set_num_threads(before[0])
        if faiss is not None:
            faiss.omp_set_num_threads(before[1])


def _run(
    n: int,
    dim: int,
    batch_sizes: Sequence[int],
    k: int,
    device: str,
    dtype: str | None,
    repeats: int,
    seed: int,
    faiss: Any,
) -> dict[str, Any]:
    """:func:`search_bench` with the threads set."""
    vectors = random_unit_vectors(n, dim, seed)  # (n, dim)
    queries = random_unit_vectors(max(batch_sizes), dim, seed + 1)  # (B, dim)
    paths: dict[str, Callable[[np.ndarray], Any]] = {}
    store = None
    if faiss is not None:
        from ..store.faiss_store import FaissStore

        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        paths["faiss_batch"] = lambda q: index.search(q, k)
        paths["faiss_singles"] = lambda q: [index.search(q[i : i + 1], k) for i in range(len(q))]
        store = FaissStore.from_embeddings(
            "bench/random", dim, [str(i) for i in range(n)], [""] * n, vectors, use_gpu=False,
            search_device=device, search_dtype=dtype,
        )  # fmt: skip
        paths["store"] = lambda q: store.search_batch(q, k)
    cpu = TorchSearch(vectors)
    paths["torch_cpu"] = lambda q: cpu.search(q, k)
    start = time.perf_counter()
    gpu = place_search(vectors, device, dtype, name="search_bench") if device != "cpu" else None
    copy_ms = (time.perf_counter() - start) * 1e3
    if gpu is not None and gpu.device.type != "cpu":
        paths["torch_gpu"] = lambda q: gpu.search(q, k)
    else:
        gpu = None

    times: dict[str, dict[str, list[float]]] = {p: {str(b): [] for b in batch_sizes} for p in paths}
    for fn in paths.values():  # warm-up (first CUDA calls, FAISS and BLAS pools)
        fn(queries[: max(batch_sizes)])
    for _ in range(repeats):
        for b in batch_sizes:
            for name, fn in paths.items():
                start = time.perf_counter()
                fn(queries[:b])
                times[name][str(b)].append((time.perf_counter() - start) * 1e3)

    reference = "faiss" if faiss is not None else "torch_cpu"
    ref = paths["faiss_batch" if faiss is not None else "torch_cpu"]
    agreement = {}
    for name in ("torch_cpu", "torch_gpu", "store"):
        if name in paths:
            agreement[name] = _agreement(paths[name], ref, queries, batch_sizes)
    return {
        "n": n,
        "dim": dim,
        "k": k,
        "batch_sizes": list(batch_sizes),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "gpu_device": str(gpu.device) if gpu is not None else None,
        "gpu_dtype": str(gpu.dtype).removeprefix("torch.") if gpu is not None else None,
        "gpu_copy_ms": round(copy_ms, 1) if gpu is not None else None,
        "store_device": str(store.search_device) if store is not None else None,
        "machine": machine_info(gpu.device if gpu is not None else "cpu"),
        "timings_ms": _summary(times, np.median),
        "best_ms": _summary(times, np.min),
        "reference": reference,
        "agreement": agreement,
    }


def _summary(times: dict[str, dict[str, list[float]]], stat: Any) -> dict[str, dict[str, float]]:
    """``stat`` of each path's and batch size's timings, in ms rounded to the microsecond."""
    return {p: {b: round(float(stat(v)), 3) for b, v in per.items()} for p, per in times.items()}


def _ids(result: Any) -> list[list[int]]:
    """Row-wise ids of a path's result: ``(scores, indices)`` arrays or RetrievedDoc lists."""
    if isinstance(result, tuple):
        return result[1].tolist()
    return [[int(d.id) for d in row] for row in result]


def _agreement(
    fn: Callable[[np.ndarray], Any],
    ref: Callable[[np.ndarray], Any],
    queries: np.ndarray,
    batch_sizes: Sequence[int],
) -> float:
    """Share of the reference's top-k ids that ``fn`` also returns, over all batch sizes."""
    found = total = 0
    for b in batch_sizes:
        for got, want in zip(_ids(fn(queries[:b])), _ids(ref(queries[:b])), strict=True):
            found += len(set(got) & set(want))
            total += len(want)
    return found / max(1, total)


def _faiss_or_none() -> Any:
    """faiss, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss

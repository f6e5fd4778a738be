"""The store's fast searches equal the plain FAISS search: the matrix-product search (torch, on the
CPU here and on a GPU where CUDA is visible), the store's choice between it and FAISS by batch
size, the GPU memory check and its fallback, thread safety, and the search micro-benchmark."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from latentrag_plugins.store import placement
from latentrag_plugins.store import torch_search as ts
from latentrag_plugins.store.rwlock import ReadWriteLock
from latentrag_plugins.store.torch_search import TorchSearch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` random unit rows, float32 (n, dim)."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The float64 top-k: scores and ids, (b, k) each."""
    s = q.astype(np.float64) @ x.astype(np.float64).T  # (b, N)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


def assert_same_hits(got, want, x, q, atol):
    """``got`` = (scores, ids) is a correct top-k like ``want``: the same scores rank by rank,
    each score the true one of its id, distinct ids, and every id of ``want`` that beats the
    k-th score by more than ``atol`` is there (ids at a tie may differ)."""
    (gs, gi), (ws, wi) = got, want
    assert gs.shape == ws.shape and gi.shape == wi.shape
    np.testing.assert_allclose(gs, ws, atol=atol, rtol=0)
    true = np.take_along_axis(q.astype(np.float64) @ x.astype(np.float64).T, gi, 1)
    np.testing.assert_allclose(gs, true, atol=atol, rtol=0)
    for r in range(len(gi)):
        assert len(set(gi[r].tolist())) == gi.shape[1]
        sure = wi[r][ws[r] > ws[r, -1] + atol]
        assert set(sure.tolist()) <= set(gi[r].tolist())


# ---------------------------------------------------------------- TorchSearch (any device)


@pytest.mark.parametrize("n,k", [(1, 1), (5, 9), (300, 1), (3000, 10)])
@pytest.mark.parametrize("b", [1, 3, 8])
def test_float32_equals_exact(n, k, b) -> None:
    x, q = unit(n, 24, 0), unit(b, 24, 1)
    got = TorchSearch(x).search(q, k)
    want = exact_topk(x, q, min(k, n))
    assert_same_hits(got, want, x, q, atol=1e-5)
    np.testing.assert_array_equal(got[1], want[1])  # random data: no ties
    assert got[0].dtype == np.float32 and got[1].dtype == np.int64


def test_chunks_merge_to_the_same_result(monkeypatch) -> None:
    x, q = unit(5000, 16, 2), unit(4, 16, 3)
    whole = TorchSearch(x).search(q, 7)
    monkeypatch.setattr(ts, "CPU_SCORE_BYTES", 1)  # 1024 rows a chunk: 5 chunks, last short
    assert TorchSearch(x).chunk_rows(4) == 1024
    np.testing.assert_array_equal(TorchSearch(x).search(q, 7)[1], whole[1])
    np.testing.assert_array_equal(TorchSearch(x).search(q, 1500)[1][:, :7], whole[1])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_rescored_in_float32(dtype) -> None:
    x, q = unit(4000, 32, 4), unit(6, 32, 5)
    search = TorchSearch(x, dtype=dtype)
    assert not search.exact and search.dtype == getattr(torch, dtype)
    scores, idx = search.search(q, 10)
    rounded = search.vectors.float().numpy()  # what the search holds
    want = exact_topk(rounded, q, 10)
    assert_same_hits((scores, idx), want, rounded, q, atol=1e-5)  # exact over rounded vectors
    assert_same_hits((scores, idx), exact_topk(x, q, 10), x, q, atol=2e-2)  # rounding only


def test_ties_are_handled() -> None:
    base = unit(50, 8, 6)
    x = np.repeat(base, 4, axis=0)  # every vector four times: exact ties everywhere
    q = unit(5, 8, 7)
    assert_same_hits(TorchSearch(x).search(q, 6), exact_topk(x, q, 6), x, q, atol=1e-5)


def test_cpu_float32_shares_the_array_and_torch_queries_work() -> None:
    x = unit(100, 8, 8)
    search = TorchSearch(x)
    assert search.vectors.data_ptr() == x.ctypes.data and search.nbytes == x.nbytes
    s1 = search.search(torch.from_numpy(unit(2, 8, 9)).double(), 3)
    s2 = search.search(unit(2, 8, 9), 3)
    np.testing.assert_array_equal(s1[1], s2[1])


def test_bad_dtype_and_shape() -> None:
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        TorchSearch(unit(3, 4, 0), dtype="int8")
    with pytest.raises(ValueError, match=r"shape \(N, dim\)"):
        TorchSearch(np.zeros(4, dtype=np.float32))
    assert ts.search_dtype(None, torch.device("cpu")) == torch.float32
    assert ts.search_dtype(None, torch.device("cuda")) == torch.float16
    assert ts.search_dtype("torch.bfloat16", torch.device("cuda")) == torch.bfloat16


# ---------------------------------------------------------------- placement


def test_auto_without_cuda_is_the_cpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placement.place_search(unit(10, 4, 0), "auto", None).device.type == "cpu"
    assert placement.place_search(unit(10, 4, 0), None, "bfloat16").dtype == torch.float32
    with pytest.raises(ValueError, match="CUDA is not available"):
        placement.place_search(unit(10, 4, 0), "cuda", None)
    with pytest.raises(ValueError, match="bad device 'gpu'"):
        placement.check_request("gpu", None)
    with pytest.raises(ValueError, match="search dtype"):
        placement.check_request("auto", "float64")


def fake_gpu(monkeypatch, free_bytes: int) -> None:
    """Pretend CUDA is there with ``free_bytes`` free (no CUDA call is made)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, 8 << 30))


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:0"])
def test_too_large_for_the_gpu_warns_and_stays_on_the_cpu(monkeypatch, caplog, device) -> None:
    fake_gpu(monkeypatch, free_bytes=600 << 20)  # 600 MiB free; needs 512 MiB + vectors > 50%
    x = unit(1000, 16, 0)
    with caplog.at_level(logging.WARNING, logger=placement.__name__):
        search = placement.place_search(x, device, None, name="FaissStore at /idx")
    assert search.device.type == "cpu" and search.exact
    msg = caplog.records[-1].getMessage()
    assert msg.startswith("FaissStore at /idx: 1,000 vectors of dim 16 in float16 take ")
    assert "GiB on cuda:0" in msg and "50% of the 0.59 GiB free there" in msg
    assert "searching on the CPU instead" in msg and "search_device='cpu'" in msg


def test_out_of_memory_while_copying_falls_back(monkeypatch, caplog) -> None:
    fake_gpu(monkeypatch, free_bytes=64 << 30)

    def oom(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(placement, "upload", oom)
    with caplog.at_level(logging.WARNING, logger=placement.__name__):
        search = placement.place_search(unit(100, 8, 0), "cuda", "bfloat16")
    assert search.device.type == "cpu"
    assert "in bfloat16 take 0.00 GiB, more than cuda:0 could allocate" in caplog.text


def test_fit_rule(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 << 30, 8 << 30))
    dev = torch.device("cuda", 0)
    room = (2 << 30) - ts.GPU_SCORE_BYTES  # half the free memory, less one chunk of scores
    assert placement.gpu_shortfall(room, dev, 0.5) is None
    assert "more than 50%" in placement.gpu_shortfall(room + 1, dev, 0.5)
    assert placement.gpu_shortfall(room + 1, dev, 0.9) is None


# ---------------------------------------------------------------- rwlock


def test_rwlock_readers_share_a_writer_waits() -> None:
    lock = ReadWriteLock()
    events: list[str] = []
    with lock.read(), lock.read():  # two readers at once (not reentrant per thread: distinct)
        writer = threading.Thread(target=lambda: lock.write().__enter__() or events.append("w"))
        writer.start()
        writer.join(0.2)
        assert writer.is_alive() and events == []  # waits for the readers
    writer.join(5)
    assert events == ["w"]


def test_rwlock_a_waiting_writer_holds_new_readers() -> None:
    lock = ReadWriteLock()
    order: list[str] = []
    first = lock.read()
    first.__enter__()
    w = threading.Thread(target=lambda: _hold(lock.write(), order, "w"))
    w.start()
    while not lock._waiting_writers:
        pass
    r = threading.Thread(target=lambda: _hold(lock.read(), order, "r"))
    r.start()
    r.join(0.2)
    assert order == []  # the reader queues behind the writer
    first.__exit__(None, None, None)
    w.join(5)
    r.join(5)
    assert order == ["w", "r"]


def _hold(ctx, order: list[str], name: str) -> None:
    with ctx:
        order.append(name)


# ---------------------------------------------------------------- the store (needs faiss)


@pytest.fixture()
def faiss():
    return pytest.importorskip("faiss")


def make_store(n: int = 3000, dim: int = 32, **kw):
    from latentrag_plugins.store import FaissStore

    x = unit(n, dim, 11)
    ids = [f"d{i}" for i in range(n)]
    meta = [{"i": i} if i % 7 == 0 else {} for i in range(n)]
    kw.setdefault("use_gpu", False)
    return FaissStore.from_embeddings("rand", dim, ids, ids, x, meta, **kw), x


def hits(rows) -> tuple[np.ndarray, np.ndarray]:
    """RetrievedDoc rows as (scores, int ids) arrays."""
    scores = np.array([[d.score for d in row] for row in rows])
    idx = np.array([[int(d.id[1:]) for d in row] for row in rows])
    return scores, idx


@pytest.mark.parametrize("b", [1, 2, 3, 4, 5, 32])
def test_store_batch_equals_plain_faiss(faiss, monkeypatch, b) -> None:
    from latentrag_plugins.store import faiss_store as fs

    store, x = make_store(search_device="cpu")
    q = unit(b, 32, 12)
    used: list[str] = []
    plain = store._faiss_search
    monkeypatch.setattr(store, "_faiss_search", lambda *a: used.append("faiss") or plain(*a))
    rows = store.search_batch(q, 5)
    assert used == (["faiss"] if b < fs.TORCH_MIN_BATCH else [])
    want = plain(q, 5)
    assert_same_hits(hits(rows), want, x, q, atol=1e-5)
    np.testing.assert_array_equal(hits(rows)[1], want[1])
    for d in (d for row in rows for d in row):
        i = int(d.id[1:])
        assert d.text == d.id and d.metadata == ({"i": i} if i % 7 == 0 else {})
    assert [r[0].id for r in rows] == [store.search(e, 5)[0].id for e in q]


def test_store_defaults_on_a_cpu_machine(faiss, monkeypatch) -> None:
    from latentrag_plugins.store import BatchVectorStore

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    store, _ = make_store(50)
    assert isinstance(store, BatchVectorStore)
    assert store.search_device == torch.device("cpu")
    assert repr(store).endswith("n=50, cpu)")
    assert store.to("cpu") is store and store.search_device.type == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        store.to("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        make_store(50, search_device="cuda")
    with pytest.raises(ValueError, match="search dtype"):
        make_store(50, search_dtype="float64")


def test_store_too_large_for_the_gpu_falls_back(faiss, monkeypatch, caplog) -> None:
    fake_gpu(monkeypatch, free_bytes=100 << 20)
    with caplog.at_level(logging.WARNING):
        store, x = make_store(500, search_device="cuda")
    assert store.search_device.type == "cpu"
    assert "FaissStore (encoder 'rand'): 500 vectors of dim 32 in float16 take" in caplog.text
    q = unit(8, 32, 1)
    assert_same_hits(hits(store.search_batch(q, 4)), store._faiss_search(q, 4), x, q, 1e-5)


def test_add_after_search_is_seen_by_every_path(faiss) -> None:
    store, x = make_store(1000)
    q = unit(6, 32, 13)
    store.search_batch(q, 3)  # places the search over the first 1000 vectors
    more = unit(20000, 32, 14)  # FAISS reallocates its vectors on this add
    store.add([f"d{1000 + i}" for i in range(len(more))], ["t"] * len(more), more)
    allx = np.concatenate([x, more])
    for b in (1, 6):
        got = hits(store.search_batch(q[:b], 3))
        assert_same_hits(got, exact_topk(allx, q[:b], 3), allx, q[:b], atol=1e-5)
    exact = unit(1, 32, 15)
    store.add(["new"], ["the one"], exact)
    assert store.search_batch(np.repeat(exact, 4, axis=0), 1)[0][0].id == "new"


def test_concurrent_searches_and_adds(faiss) -> None:
    store, x = make_store(2000)
    q = unit(8, 32, 16)
    want = hits(store.search_batch(q, 5))
    errors: list[BaseException] = []

    def searcher() -> None:
        try:
            for i in range(30):
                got = hits(store.search_batch(q[: 1 + i % 8], 5))
                assert got[1].max() < len(store)
                # added vectors are far from q (orthogonal to all of it): results never change
                np.testing.assert_array_equal(got[1], want[1][: 1 + i % 8])
        except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(e)

    basis = np.linalg.svd(q.astype(np.float64))[2][len(q) :]  # unit rows orthogonal to q
    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for j in range(10):
        store.add([f"d{2000 + j}"], ["far"], basis[j : j + 1].astype(np.float32))
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert len(store) == 2010


def test_faiss_gpu_keeps_faiss_in_charge(faiss, monkeypatch) -> None:
    from latentrag_plugins.store import faiss_store as fs

    monkeypatch.setattr(fs, "_gpu_available", lambda f: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda r, d, ix: ix, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda ix: ix, raising=False)
    store, x = make_store(300, use_gpu=None)
    assert store.on_gpu and store._torch is None and store.search_device == torch.device("cuda", 0)
    q = unit(8, 32, 1)
    np.testing.assert_array_equal(hits(store.search_batch(q, 3))[1], store._faiss_search(q, 3)[1])
    store.to("cpu")
    assert not store.on_gpu and store.search_device.type == "cpu"


def test_other_faiss_indexes_are_searched_by_faiss(faiss) -> None:
    store, x = make_store(500)
    hnsw = faiss.IndexHNSWFlat(32, 16, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(x)
    store._index, store._placed = hnsw, False
    q = unit(8, 32, 3)
    assert hits(store.search_batch(q, 3))[1].tolist() == hnsw.search(q, 3)[1].tolist()
    assert store._torch is None


def test_no_faiss_on_import() -> None:
    code = (
        "import sys, latentrag_plugins.store.torch_search, latentrag_plugins.store.placement, "
        "latentrag_plugins.bench.search_bench; assert 'faiss' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- the micro-benchmark


def test_search_bench_reports_every_path() -> None:
    from latentrag_plugins.bench.search_bench import search_bench

    threads = torch.get_num_threads()
    out = search_bench(2000, 16, (1, 5), k=3, device="cpu", threads=1, repeats=2)
    assert torch.get_num_threads() == threads  # restored
    assert out["threads"] == 1 and out["gpu_device"] is None and out["gpu_copy_ms"] is None
    paths = {"torch_cpu"} | ({"faiss_batch", "faiss_singles", "store"} if _has_faiss() else set())
    assert set(out["timings_ms"]) == paths
    assert all(set(v) == {"1", "5"} and min(v.values()) > 0 for v in out["timings_ms"].values())
    assert all(a == 1.0 for a in out["agreement"].values())
    assert out["machine"]["cpu_count"] >= 1


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- CUDA


@cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_cuda_search_equals_exact(dtype) -> None:
    x, q = unit(50_000, 64, 20), unit(32, 64, 21)
    search = TorchSearch(x, device="cuda", dtype=dtype)
    assert search.device.type == "cuda"
    for b in (1, 4, 32):
        got = search.search(q[:b], 10)
        atol = 1e-5 if dtype == "float32" else 2e-2
        assert_same_hits(got, exact_topk(x, q[:b], 10), x, q[:b], atol=atol)
        rounded = search.vectors.float().cpu().numpy()
        assert_same_hits(got, exact_topk(rounded, q[:b], 10), rounded, q[:b], atol=1e-4)


@cuda
def test_cuda_chunks_and_upload(monkeypatch) -> None:
    monkeypatch.setattr(placement, "UPLOAD_ROWS", 1000)
    monkeypatch.setattr(ts, "GPU_SCORE_BYTES", 1)
    x, q = unit(7777, 32, 22), unit(5, 32, 23)
    search = placement.place_search(x, "cuda", "float32")
    assert search.device.type == "cuda" and torch.equal(search.vectors.cpu(), torch.from_numpy(x))
    assert_same_hits(search.search(q, 20), exact_topk(x, q, 20), x, q, atol=1e-5)


@cuda
def test_cuda_store_equals_plain_faiss(faiss, caplog) -> None:
    store, x = make_store(20_000, 64)  # "auto": on the GPU
    assert store.search_device.type == "cuda"
    q = unit(16, 64, 24)
    for b in (1, 16):
        got = hits(store.search_batch(q[:b], 8))
        assert_same_hits(got, store._faiss_search(q[:b], 8), x, q[:b], atol=2e-3)
    with caplog.at_level(logging.WARNING):
        store.to("cuda", memory_fraction=1e-6)  # too large now: a warning, and the CPU
    assert store.search_device.type == "cpu" and "searching on the CPU instead" in caplog.text
    store.to("cuda", dtype="float32", memory_fraction=0.5)
    assert store.search_device.type == "cuda" and store._torch.exact
    got = hits(store.search_batch(q, 8))
    assert_same_hits(got, store._faiss_search(q, 8), x, q, atol=1e-5)
    store.add(["extra"], ["x"], q[:1])  # re-placed on the GPU at the next search
    assert store.search(q[0], 1)[0].id == "extra" and store.search_device.type == "cuda"

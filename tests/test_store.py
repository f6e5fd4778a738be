"""Tests of the embedded FAISS store and the corpus reader (no model, a hashing fake encoder)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from latentrag_plugins._version import __version__  # noqa: E402
from latentrag_plugins.errors import EncoderMismatchError, LatentRAGError, StoreError  # noqa: E402
from latentrag_plugins.store import Encoder, FaissStore, VectorStore  # noqa: E402
from latentrag_plugins.store import faiss_store as fs  # noqa: E402
from latentrag_plugins.store.corpus import CorpusDoc, iter_corpus, read_corpus  # noqa: E402

DIM = 32


class HashEncoder:
    """Deterministic bag-of-words encoder: each word hashes to one of DIM buckets."""

    def __init__(self, encoder_id: str = "test/hash-bow", dim: int = DIM) -> None:
        self.encoder_id = encoder_id
        self.dim = dim
        self.calls: list[int] = []  # batch sizes seen by embed_documents

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)  # (dim,)
        for word in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def embed_documents(
        self, texts: list[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        self.calls.append(len(texts))
        return np.stack([self._vec(t) for t in texts]).astype(np.float32)  # (N, dim)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vec(text)  # (dim,)


DOCS = [
    CorpusDoc("paris", "Paris\nParis is the capital of France."),
    CorpusDoc("berlin", "Berlin\nBerlin is the capital of Germany."),
    CorpusDoc("python", "Python\nPython is a programming language.", {"lang": "en"}),
    CorpusDoc("tokyo", "Tokyo\nTokyo is the largest city in Japan."),
]


@pytest.fixture()
def enc() -> HashEncoder:
    return HashEncoder()


@pytest.fixture()
def store(enc: HashEncoder) -> FaissStore:
    return FaissStore.build(enc, DOCS, show_progress=False, use_gpu=False)


def test_protocols(enc: HashEncoder, store: FaissStore) -> None:
    assert isinstance(enc, Encoder)
    assert isinstance(store, VectorStore)
    assert len(store) == 4 and store.dim == DIM and store.encoder_id == "test/hash-bow"
    assert store.metric == "inner_product" and store.normalized is True


def test_build_search_ranks_right_doc_first(enc: HashEncoder, store: FaissStore) -> None:
    for query, want in [("programming language python", "python"), ("Japan Tokyo", "tokyo")]:
        hits = store.search(enc.embed_query(query), k=2)
        assert [h.id for h in hits][0] == want
        assert hits[0].score >= hits[1].score
    hit = store.search(enc.embed_query("python"), k=1)[0]
    assert hit.title == "Python" and hit.metadata == {"lang": "en"}
    assert store.search(enc.embed_query("Paris"), k=1)[0].metadata == {}


def test_build_in_chunks_with_stream(enc: HashEncoder) -> None:
    s = FaissStore.build(enc, iter(DOCS), chunk_size=3, show_progress=False, use_gpu=False)
    assert enc.calls == [3, 1] and s.ids == [d.id for d in DOCS]


def test_k_clamped_and_batch(enc: HashEncoder, store: FaissStore) -> None:
    assert len(store.search(enc.embed_query("capital"), k=100)) == 4
    q = np.stack([enc.embed_query("France Paris"), enc.embed_query("Berlin Germany")])  # (2, dim)
    res = store.search_batch(q, k=1)
    assert [r[0].id for r in res] == ["paris", "berlin"]
    with pytest.raises(StoreError, match="k must be"):
        store.search(q[0], k=0)


def test_torch_query(enc: HashEncoder, store: FaissStore) -> None:
    torch = pytest.importorskip("torch")
    q = torch.tensor(enc.embed_query("Tokyo Japan"), dtype=torch.bfloat16)
    assert store.search(q, k=1)[0].id == "tokyo"
    assert store.search_batch(q[None, :], k=1)[0][0].id == "tokyo"


def test_score_is_inner_product(enc: HashEncoder, store: FaissStore) -> None:
    q = enc.embed_query("Berlin capital")
    hit = store.search(q, k=1)[0]
    assert hit.score == pytest.approx(float(enc._vec(DOCS[1].text) @ q), abs=1e-5)


def test_wrong_query_dim(store: FaissStore) -> None:
    with pytest.raises(StoreError, match=r"dimension 16.*32-dim"):
        store.search(np.ones(16, dtype=np.float32), k=1)
    with pytest.raises(StoreError, match="search_batch"):
        store.search(np.ones((2, DIM), dtype=np.float32), k=1)
    with pytest.raises(StoreError, match="NaN"):
        store.search(np.full(DIM, np.nan, dtype=np.float32), k=1)


def test_empty_store(tmp_path: Path) -> None:
    s = FaissStore("test/hash-bow", DIM, use_gpu=False)
    with pytest.raises(StoreError, match="is empty"):
        s.search(np.ones(DIM, dtype=np.float32) / np.sqrt(DIM), k=3)
    s.save(tmp_path / "empty")
    with pytest.raises(StoreError, match="is empty"):
        FaissStore.load(tmp_path / "empty", use_gpu=False).search(np.zeros(DIM), k=1)
    with pytest.raises(StoreError, match="no documents"):
        FaissStore.build(HashEncoder(), [], show_progress=False)
    assert len(FaissStore.from_embeddings("test/hash-bow", DIM, [], [], [], use_gpu=False)) == 0


def test_save_load_same_results(enc: HashEncoder, store: FaissStore, tmp_path: Path) -> None:
    out = store.save(tmp_path / "idx")
    assert sorted(p.name for p in out.iterdir()) == ["docs.jsonl", "index.faiss", "manifest.json"]
    loaded = FaissStore.load(out, encoder_id=enc.encoder_id, dim=DIM, use_gpu=False)
    q = np.stack([enc.embed_query(t) for t in ["capital France", "language", "city"]])
    assert loaded.search_batch(q, 3) == store.search_batch(q, 3)
    assert loaded.ids == store.ids and loaded.texts == store.texts


def test_manifest(store: FaissStore, tmp_path: Path) -> None:
    man = json.loads((store.save(tmp_path / "idx") / "manifest.json").read_text())
    assert man["encoder_id"] == "test/hash-bow"
    assert man["dim"] == DIM and man["count"] == 4
    assert man["metric"] == "inner_product" and man["normalized"] is True
    assert man["library_version"] == __version__ and man["format_version"] == 1
    rows = [json.loads(x) for x in (tmp_path / "idx" / "docs.jsonl").read_text().splitlines()]
    assert rows[0] == {"id": "paris", "contents": DOCS[0].text}
    assert rows[2]["metadata"] == {"lang": "en"}


def test_mismatched_encoder_refused(store: FaissStore, tmp_path: Path) -> None:
    store.save(tmp_path / "idx")
    with pytest.raises(EncoderMismatchError, match=r"'test/hash-bow'.*'other/model'"):
        FaissStore.load(tmp_path / "idx", encoder_id="other/model")
    with pytest.raises(EncoderMismatchError, match=r"32-dim.*768-dim"):
        FaissStore.load(tmp_path / "idx", encoder_id="test/hash-bow", dim=768)


@pytest.mark.parametrize("name", ["manifest.json", "index.faiss", "docs.jsonl"])
def test_missing_or_corrupt_files_named(store: FaissStore, tmp_path: Path, name: str) -> None:
    store.save(tmp_path / "idx")
    (tmp_path / "idx" / name).write_text("{not valid")
    with pytest.raises(StoreError, match=re.escape(name)):
        FaissStore.load(tmp_path / "idx", use_gpu=False)
    (tmp_path / "idx" / name).unlink()
    with pytest.raises(StoreError, match=re.escape(name)):
        FaissStore.load(tmp_path / "idx", use_gpu=False)
    with pytest.raises(StoreError, match="not found"):
        FaissStore.load(tmp_path / "nowhere")


def test_a_save_cut_between_its_two_renames_is_recovered(store: FaissStore, tmp_path: Path) -> None:
    store.save(tmp_path / "idx")
    (tmp_path / "idx").rename(tmp_path / ".idx.old")  # where a crash mid-swap leaves it
    assert len(FaissStore.load(tmp_path / "idx", use_gpu=False)) == len(store)  # read in place
    assert (tmp_path / ".idx.old").is_dir() and not (tmp_path / "idx").exists()
    store.save(tmp_path / "idx")  # the next save puts it back first, then replaces it
    assert (tmp_path / "idx" / "manifest.json").is_file() and not (tmp_path / ".idx.old").exists()


def test_non_utf8_documents_file_is_a_store_error(store: FaissStore, tmp_path: Path) -> None:
    store.save(tmp_path / "idx")
    docs = tmp_path / "idx" / "docs.jsonl"
    docs.write_bytes(docs.read_bytes().replace(b"Paris", b"Par\xffs", 1))
    with pytest.raises(StoreError, match=r"docs\.jsonl:1: corrupt document line"):
        FaissStore.load(tmp_path / "idx", use_gpu=False)


def test_atomic_save_keeps_old_store(
    enc: HashEncoder, store: FaissStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save(tmp_path / "idx")
    before = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    bigger = FaissStore.build(
        enc, [*DOCS, CorpusDoc("rome", "Rome\nItaly")], show_progress=False, use_gpu=False
    )

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(fs, "write_docs_jsonl", boom)
    with pytest.raises(OSError, match="disk full"):
        bigger.save(tmp_path / "idx")
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temp dirs left behind
    assert len(FaissStore.load(tmp_path / "idx", use_gpu=False)) == 4


def test_save_refuses_foreign_dir(store: FaissStore, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="refusing"):
        store.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_from_embeddings_and_add() -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((100, 8)).astype(np.float32)  # (100, 8)
    ids, texts = [str(i) for i in range(100)], [f"doc {i}" for i in range(100)]
    with pytest.raises(StoreError, match="not L2-normalised"):
        FaissStore.from_embeddings("rand", 8, ids, texts, emb, use_gpu=False)
    s = FaissStore.from_embeddings("rand", 8, ids, texts, emb, normalize=True, use_gpu=False)
    assert s.search(emb[42], k=1)[0].id == "42"
    with pytest.raises(StoreError, match="duplicate document id '7'"):
        s.add(["7"], ["again"], emb[:1], normalize=True)
    with pytest.raises(StoreError, match=r"expected \(1, 8\)"):
        s.add(["x"], ["x"], np.ones((1, 4), dtype=np.float32))
    s.add(["new"], ["new doc"], emb[:1], metadata=[{"src": "added"}], normalize=True)
    assert len(s) == 101 and s.search(emb[0], k=2)[1].metadata in ({}, {"src": "added"})


def test_gpu_wiring_with_fake_faiss(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    faiss = pytest.importorskip("faiss")
    moved: list[str] = []
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: "res", raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(
        faiss, "index_cpu_to_gpu", lambda r, d, ix: moved.append("to") or ix, raising=False
    )
    monkeypatch.setattr(
        faiss, "index_gpu_to_cpu", lambda ix: moved.append("back") or ix, raising=False
    )
    s = FaissStore.from_embeddings("e", DIM, ["a"], ["a"], np.eye(DIM, dtype=np.float32)[:1])
    assert s.on_gpu and moved == ["to"]
    assert s.search(np.eye(DIM)[0], k=1)[0].id == "a"
    s.save(tmp_path / "idx")  # saves the CPU index
    assert moved == ["to", "back"]
    assert not FaissStore.load(tmp_path / "idx", use_gpu=False).on_gpu


def test_use_gpu_true_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs, "_gpu_available", lambda faiss: False)
    with pytest.raises(StoreError, match="no GPU"):
        FaissStore.from_embeddings("e", 2, ["a"], ["a"], np.array([[1.0, 0.0]]), use_gpu=True)


# ---------------------------------------------------------------- corpus


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_corpus_contents_format(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "c.jsonl",
        [
            json.dumps({"id": 1, "contents": '"Paris"\nParis is in France.'}),
            "",
            json.dumps({"id": "b", "contents": "No title body", "year": 2020}),
        ],
    )
    docs = read_corpus(p)
    assert [d.id for d in docs] == ["1", "b"]
    assert docs[0].text == '"Paris"\nParis is in France.'
    assert docs[1].metadata == {"year": 2020}


def test_corpus_title_text_format(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "c.jsonl",
        [
            json.dumps({"id": 7, "title": "Paris", "text": "Paris is in France."}),
            json.dumps({"id": 8, "title": "", "text": "Untitled."}),
            json.dumps({"id": 9, "text": "No title key."}),
        ],
    )
    docs = list(iter_corpus(p))
    assert [d.text for d in docs] == ["Paris\nParis is in France.", "Untitled.", "No title key."]
    assert docs[0].id == "7"


@pytest.mark.parametrize(
    ("bad", "msg"),
    [
        ('{"contents": "x"}', "missing 'id'"),
        ('{"id": 3, "title": "t"}', "missing text"),
        ('{"id": 3.5, "contents": "x"}', "'id' must be"),
        ('{"id": 3, "contents": "  "}', "empty text"),
        ('{"id": 3, "contents": 5}', "'contents' must be a string"),
        ("not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_corpus_bad_line_reports_line_number(tmp_path: Path, bad: str, msg: str) -> None:
    p = _write(tmp_path / "c.jsonl", ['{"id": 1, "contents": "ok"}', "", bad])
    with pytest.raises(LatentRAGError, match=rf"c\.jsonl:3: .*{re.escape(msg)}"):
        read_corpus(p)


def test_corpus_duplicate_and_empty(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.jsonl", ['{"id": 1, "contents": "a"}', '{"id": "1", "contents": "b"}'])
    with pytest.raises(
        LatentRAGError, match=r"d\.jsonl:2: duplicate id '1' \(first seen on line 1"
    ):
        read_corpus(p)
    with pytest.raises(LatentRAGError, match="empty corpus"):
        read_corpus(_write(tmp_path / "e.jsonl", ["", "  "]))
    with pytest.raises(LatentRAGError, match="file not found"):
        read_corpus(tmp_path / "missing.jsonl")


def test_build_from_corpus_file(enc: HashEncoder, tmp_path: Path) -> None:
    lines = [json.dumps({"id": d.id, "contents": d.text}) for d in DOCS]
    s = FaissStore.build(enc, read_corpus(_write(tmp_path / "c.jsonl", lines)), show_progress=False)
    assert s.search(enc.embed_query("Berlin Germany"), k=1)[0].id == "berlin"


def test_a_failed_single_file_write_keeps_the_old_file(tmp_path, monkeypatch):
    from latentrag_plugins.io_utils import write_json_atomic

    p = tmp_path / "trainer_state.json"
    write_json_atomic(p, {"step": 2})
    real = Path.write_text

    def torn(self, text, **kw):  # the disk fills up half-way
        real(self, text[:5], **kw)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", torn)
    with pytest.raises(OSError):
        write_json_atomic(p, {"step": 4})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"step": 2}
    assert [x.name for x in tmp_path.iterdir()] == ["trainer_state.json"]


def test_same_encoder_accepts_aliases_and_local_copies_only(tmp_path):
    """One rule for both integrations: the same id (MiniLM aliases too; hub ids in any case), or
    a hub id and a local directory named as it; otherwise two hub ids or two local paths differ."""
    from latentrag_plugins.encoder import same_encoder

    hub = "sentence-transformers/all-MiniLM-L6-v2"
    assert same_encoder(hub, hub) and same_encoder("minilm", hub)
    assert same_encoder("/models/all-MiniLM-L6-v2", hub)  # a local copy
    assert same_encoder(hub, "./all-MiniLM-L6-v2/")
    assert not same_encoder("BAAI/bge-small-en-v1.5", "my-org/bge-small-en-v1.5")  # a fine-tune?
    assert not same_encoder("/ckpts/run1/retriever", "/ckpts/run2/retriever")
    assert same_encoder("Sentence-Transformers/ALL-MiniLM-L6-v2", hub)  # the hub ignores case
    assert same_encoder("baai/BGE-small-en-v1.5", "BAAI/bge-small-en-v1.5")
    assert not same_encoder("/ckpts/Run/retriever", "/ckpts/run/retriever")  # local: exact
    assert not same_encoder("/models/bge-small-en-v1.5", hub)
    copy = tmp_path / "all-MiniLM-L6-v2"
    copy.mkdir()
    assert same_encoder(str(copy), hub)

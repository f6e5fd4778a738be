"""The embedded vector store: an exact inner-product FAISS index plus document texts and a manifest.

A saved store is a directory::

    index.faiss    FAISS IndexFlatIP (always the CPU index)
    docs.jsonl     one {"id", "contents"[, "metadata"]} per vector, in index order
    manifest.json  encoder_id, dim, metric, normalized, count, versions

faiss is imported lazily, so ``import latentrag_plugins`` never needs it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._version import __version__
from ..errors import StoreError
from ..extras import require
from ..io_utils import atomic_path, readable_dir, replaceable_dir
from ..results import RetrievedDoc
from .base import Encoder, check_compatible
from .corpus import read_docs_jsonl, write_docs_jsonl

logger = logging.getLogger(__name__)

FORMAT = "latentrag-faiss-store"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
DOCS_FILE = "docs.jsonl"
MANIFEST_FILE = "manifest.json"
GPU_MAX_K = 2048  # faiss GPU indexes return at most this many neighbours


def _faiss() -> Any:
    """Import faiss, or raise an ImportError naming the extra that installs it."""
    return require("faiss", "faiss", "the embedded FAISS store")


def _gpu_available(faiss: Any) -> bool:
    """True if this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """Turn a numpy array or torch tensor into a C-contiguous float32 numpy array."""
    if hasattr(x, "detach"):  # torch tensor (any device / dtype); avoids importing torch
        x = x.detach().float().cpu().numpy()
    try:
        return np.ascontiguousarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{name} must be a numeric array: {exc}") from None


def _row_norms(x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """L2 norms of the rows of ``x`` (N, dim) -> (N,), in chunks to bound temporary memory."""
    out = np.empty(x.shape[0], dtype=np.float32)  # (N,)
    for i in range(0, x.shape[0], chunk):
        part = x[i : i + chunk]  # (c, dim)
        out[i : i + chunk] = np.sqrt(np.einsum("ij,ij->i", part, part))
    return out


def refusal(path: str | os.PathLike[str]) -> str | None:
    """Why :meth:`FaissStore.save` would refuse ``path`` (None: it may write there): a file, or
    a non-empty directory that is not a FaissStore's. Check it before building a store."""
    return replaceable_dir(
        path,
        manifest=MANIFEST_FILE,
        fmt=FORMAT,
        owned=(INDEX_FILE, DOCS_FILE, MANIFEST_FILE),
        what="FaissStore",
    )


class FaissStore:
    """Exact inner-product search over L2-normalised document embeddings (cosine similarity).

    Implements the :class:`~latentrag_plugins.store.base.VectorStore` protocol. Scores are inner
    products, higher is better.

    Attributes:
        encoder_id: Id of the encoder that made the vectors.
        dim: Embedding dimension.
        metric: Always ``"inner_product"``.
        normalized: Always True: vectors are L2-normalised.
    """

    metric: str = "inner_product"
    normalized: bool = True

    def __init__(self, encoder_id: str, dim: int, *, use_gpu: bool | None = None) -> None:
        """Create an empty store for ``dim``-dim vectors of encoder ``encoder_id``.

        ``use_gpu`` moves the index to GPU 0 after build / load: True, False, or None (auto: if
        this faiss build has GPU support and sees a GPU).
        """
        if int(dim) <= 0:
            raise StoreError(f"dim must be positive, got {dim}")
        faiss = _faiss()
        self.encoder_id = str(encoder_id)
        self.dim = int(dim)
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._meta: list[dict[str, Any]] | None = None  # None: no document has metadata
        self._index: Any = faiss.IndexFlatIP(self.dim)
        self._gpu_res: Any = None
        self._use_gpu = use_gpu

    # ---------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        encoder: Encoder,
        docs: Iterable[Any],
        *,
        batch_size: int = 64,
        show_progress: bool = True,
        chunk_size: int = 4096,
        use_gpu: bool | None = None,
    ) -> FaissStore:
        """Embed documents with ``encoder`` and index them.

        Documents are embedded ``chunk_size`` at a time, so memory stays bounded and one progress
        bar covers the whole corpus. ``docs`` may be a list or a stream (e.g. ``iter_corpus``).

        Args:
            encoder: The document tower (``encoder_id``, ``dim``, ``embed_documents``).
            docs: Objects with ``id`` and ``text`` (and optionally ``metadata``), e.g. CorpusDoc.
            batch_size: Encoder batch size.
            show_progress: Show a progress bar over documents.
            chunk_size: Documents embedded and added to the index per chunk.
            use_gpu: See :meth:`__init__`; the index moves to the GPU after building.

        Returns:
            The new store.

        Raises:
            StoreError: If there are no documents, ids repeat, or the encoder returns a bad shape.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        store = cls(encoder.encoder_id, encoder.dim, use_gpu=False)
        total = len(docs) if hasattr(docs, "__len__") else None  # type: ignore[arg-type]
        it = iter(docs)
        with tqdm(total=total, desc="Embedding", unit="doc", disable=not show_progress) as bar:
            while chunk := list(itertools.islice(it, max(1, chunk_size))):
                texts = [str(d.text) for d in chunk]
                emb = _as_matrix(
                    encoder.embed_documents(texts, batch_size=batch_size, show_progress=False),
                    "encoder output",
                )  # (n, dim)
                if emb.shape != (len(chunk), store.dim):
                    raise StoreError(
                        f"encoder {encoder.encoder_id!r} returned an array of shape {emb.shape} "
                        f"for {len(chunk)} documents; expected ({len(chunk)}, {store.dim})"
                    )
                metas = [getattr(d, "metadata", None) or {} for d in chunk]
                store.add([str(d.id) for d in chunk], texts, emb, metadata=metas)
                bar.update(len(chunk))
        if len(store) == 0:
            raise StoreError("no documents to index (the corpus is empty)")
        store._use_gpu = use_gpu
        store._maybe_to_gpu()
        return store

    @classmethod
    def from_embeddings(
        cls,
        encoder_id: str,
        dim: int,
        ids: Sequence[str],
        texts: Sequence[str],
        embeddings: Any,
        metadata: Sequence[dict[str, Any]] | None = None,
        *,
        normalize: bool = False,
        use_gpu: bool | None = None,
    ) -> FaissStore:
        """Make a store from precomputed vectors (fast path for large or synthetic stores).

        Arguments are those of :meth:`__init__` and :meth:`add`. The store may be empty (N == 0).
        """
        store = cls(encoder_id, dim, use_gpu=False)
        store.add(ids, texts, embeddings, metadata=metadata, normalize=normalize)
        store._use_gpu = use_gpu
        store._maybe_to_gpu()
        return store

    def add(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        embeddings: Any,
        metadata: Sequence[dict[str, Any]] | None = None,
        *,
        normalize: bool = False,
    ) -> None:
        """Append documents with precomputed vectors.

        Args:
            ids: Document ids, unique in the store, one per row.
            texts: Document texts, one per row.
            embeddings: Array or tensor of shape (N, dim), L2-normalised unless ``normalize``.
            metadata: Optional metadata dict per document.
            normalize: L2-normalise the rows first.

        Raises:
            StoreError: On mismatched lengths or dimension, duplicate ids, or unnormalised rows.
        """
        emb = _as_matrix(embeddings, "embeddings")  # (N, dim)
        n = len(ids)
        if n == 0 and emb.size == 0:
            emb = emb.reshape(0, self.dim)  # e.g. an empty list
        if emb.ndim != 2 or emb.shape[0] != n or (n and emb.shape[1] != self.dim):
            raise StoreError(
                f"embeddings have shape {emb.shape}; expected ({n}, {self.dim}) for {n} ids "
                f"(store dim {self.dim})"
            )
        if len(texts) != n or (metadata is not None and len(metadata) != n):
            raise StoreError(f"got {n} ids but {len(texts)} texts / metadata of another length")
        if n == 0:
            return
        new_ids = list(map(str, ids))
        uniq = set(new_ids)
        if len(uniq) != n or not uniq.isdisjoint(self._ids):
            seen = set(self._ids)
            for doc_id in new_ids:
                if doc_id in seen:
                    raise StoreError(f"duplicate document id {doc_id!r}")
                seen.add(doc_id)
        norms = _row_norms(emb)  # (N,); NaN / inf if a row has NaN / inf
        if not np.isfinite(norms).all():
            raise StoreError("embeddings contain NaN or infinite values")
        if normalize:
            emb = emb / np.maximum(norms, 1e-12)[:, None]  # (N, dim), a copy
        elif not np.allclose(norms, 1.0, atol=1e-3):
            raise StoreError(
                "embeddings are not L2-normalised (norms from "
                f"{norms.min():.4g} to {norms.max():.4g}); pass normalize=True"
            )
        self._index.add(emb)
        self._ids.extend(new_ids)
        self._texts.extend(map(str, texts))
        if metadata is not None and any(metadata):
            if self._meta is None:  # first metadata: backfill empty dicts for earlier docs
                self._meta = [{} for _ in range(len(self._ids) - n)]
            self._meta.extend(dict(m or {}) for m in metadata)
        elif self._meta is not None:
            self._meta.extend({} for _ in range(n))

    # ---------------------------------------------------------------- GPU

    @property
    def on_gpu(self) -> bool:
        """True if the index lives on a GPU."""
        return self._gpu_res is not None

    def _maybe_to_gpu(self) -> None:
        """Move the index to GPU 0 if asked (use_gpu=True) or possible (use_gpu=None)."""
        if self._use_gpu is False or self.on_gpu:
            return
        faiss = _faiss()
        if not _gpu_available(faiss):
            if self._use_gpu:
                raise StoreError("use_gpu=True, but this faiss build has no GPU support or no GPU")
            return
        self._gpu_res = faiss.StandardGpuResources()
        self._index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._index)
        logger.debug("FaissStore: index moved to GPU (%d vectors)", len(self))

    def _cpu_index(self) -> Any:
        """The index as a CPU index (a copy if it lives on the GPU)."""
        return _faiss().index_gpu_to_cpu(self._index) if self.on_gpu else self._index

    # ---------------------------------------------------------------- search

    def __len__(self) -> int:
        """Number of documents in the store."""
        return len(self._ids)

    def __repr__(self) -> str:
        dev = "gpu" if self.on_gpu else "cpu"
        return f"FaissStore(encoder_id={self.encoder_id!r}, dim={self.dim}, n={len(self)}, {dev})"

    @property
    def ids(self) -> list[str]:
        """Document ids in index order (read-only by convention)."""
        return self._ids

    @property
    def texts(self) -> list[str]:
        """Document texts in index order (read-only by convention)."""
        return self._texts

    def search(self, embedding: Any, k: int) -> list[RetrievedDoc]:
        """Return the top-``k`` documents (best first) for one query of shape (dim,) or (1, dim).

        ``embedding`` may be a numpy array or a torch tensor; ``k`` is clamped to the store size;
        ``score`` is the inner product. Raises StoreError on an empty store, a wrong dimension or
        non-finite values.
        """
        q = _as_matrix(embedding, "query embedding")
        if q.ndim == 2 and q.shape[0] == 1:
            q = q[0]
        if q.ndim != 1:
            raise StoreError(
                f"search() takes one query embedding of shape ({self.dim},), got shape {q.shape}; "
                "use search_batch() for several"
            )
        return self.search_batch(q[None, :], k)[0]

    def search_batch(self, embeddings: Any, k: int) -> list[list[RetrievedDoc]]:
        """Return the top-``k`` documents for each query of ``embeddings`` (B, dim); see search."""
        q = _as_matrix(embeddings, "query embeddings")  # (B, dim)
        if q.ndim != 2:
            raise StoreError(f"search_batch() takes shape (B, {self.dim}), got shape {q.shape}")
        if q.shape[1] != self.dim:
            raise StoreError(
                f"query embedding has dimension {q.shape[1]}, but the store holds {self.dim}-dim "
                f"vectors (encoder {self.encoder_id!r})"
            )
        if len(self) == 0:
            raise StoreError("the store is empty: index some documents first")
        if int(k) < 1:
            raise StoreError(f"k must be at least 1, got {k}")
        if not np.isfinite(q).all():
            raise StoreError("query embedding contains NaN or infinite values")
        if q.shape[0] == 0:
            return []
        k = min(int(k), len(self))
        if self.on_gpu and k > GPU_MAX_K:
            logger.warning("FaissStore: k=%d clamped to %d on the GPU", k, GPU_MAX_K)
            k = GPU_MAX_K
        scores, idx = self._index.search(q, k)  # (B, k), (B, k)
        out: list[list[RetrievedDoc]] = []
        for row_s, row_i in zip(scores.tolist(), idx.tolist(), strict=True):
            out.append(
                [
                    RetrievedDoc(
                        id=self._ids[i],
                        text=self._texts[i],
                        score=s,
                        metadata=dict(self._meta[i]) if self._meta is not None else {},
                    )
                    for s, i in zip(row_s, row_i, strict=True)
                    if i >= 0
                ]
            )
        return out

    # ---------------------------------------------------------------- persistence

    def manifest(self) -> dict[str, Any]:
        """The manifest that :meth:`save` writes."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "encoder_id": self.encoder_id,
            "dim": self.dim,
            "metric": self.metric,
            "normalized": self.normalized,
            "count": len(self),
            "index_type": "IndexFlatIP",
            "library_version": __version__,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the store to a directory atomically (a crash leaves any old store intact).

        Args:
            path: Target directory; replaced if it holds a store, refused if it holds other files.

        Returns:
            The directory path.

        Raises:
            StoreError: If ``path`` is a file or a non-empty directory that is not a store.
        """
        target = Path(path)
        if (why := refusal(target)) is not None:
            raise StoreError(why)
        faiss = _faiss()
        with atomic_path(target) as tmp:
            tmp.mkdir()
            faiss.write_index(self._cpu_index(), str(tmp / INDEX_FILE))
            write_docs_jsonl(tmp / DOCS_FILE, self._ids, self._texts, self._meta)
            text = json.dumps(self.manifest(), indent=2, sort_keys=True) + "\n"
            (tmp / MANIFEST_FILE).write_text(text, encoding="utf-8")
        return target

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        encoder_id: str | None = None,
        dim: int | None = None,
        use_gpu: bool | None = None,
    ) -> FaissStore:
        """Load a store saved by :meth:`save`.

        Args:
            path: The store directory.
            encoder_id: If given, the store must have been built with this encoder.
            dim: If given, the store must hold vectors of this dimension.
            use_gpu: See :meth:`__init__`.

        Returns:
            The store.

        Raises:
            StoreError: If a file is missing or corrupt (the message names it).
            EncoderMismatchError: If ``encoder_id`` or ``dim`` differ from the manifest's.
        """
        root = readable_dir(path)
        if not root.is_dir():
            raise StoreError(f"{root}: store directory not found")
        mpath = root / MANIFEST_FILE
        try:
            man = json.loads(mpath.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{mpath}: missing store manifest") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{mpath}: corrupt store manifest ({exc})") from None
        if isinstance(man, dict) and man.get("format", FORMAT) != FORMAT:
            raise StoreError(f"{root}: is a {man['format']} directory, not a {FORMAT}")
        try:
            if int(man["format_version"]) > FORMAT_VERSION:
                raise StoreError(
                    f"{mpath}: format version {man['format_version']} is newer than this "
                    f"library supports ({FORMAT_VERSION}); upgrade latentrag-plugins"
                )
            store = cls(str(man["encoder_id"]), int(man["dim"]), use_gpu=False)
            count = int(man["count"])
            metric = man.get("metric", cls.metric)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{mpath}: corrupt store manifest (bad or missing {exc})") from None
        if metric != cls.metric:
            raise StoreError(f"{mpath}: not a {FORMAT} manifest with metric {cls.metric!r}")
        if encoder_id is not None or dim is not None:
            check_compatible(
                store,
                encoder_id if encoder_id is not None else store.encoder_id,
                dim if dim is not None else store.dim,
            )

        faiss = _faiss()
        ipath = root / INDEX_FILE
        if not ipath.is_file():
            raise StoreError(f"{ipath}: missing index file")
        try:
            index = faiss.read_index(str(ipath))
        except RuntimeError as exc:
            raise StoreError(f"{ipath}: corrupt index file ({str(exc).splitlines()[0]})") from None
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise StoreError(f"{ipath}: index does not use the inner-product metric")
        if index.d != store.dim or index.ntotal != count:
            raise StoreError(
                f"{ipath}: index holds {index.ntotal} vectors of dim {index.d}, but {mpath.name} "
                f"says {count} of dim {store.dim}"
            )
        store._index = index
        store._ids, store._texts, store._meta = read_docs_jsonl(root / DOCS_FILE, count)
        store._use_gpu = use_gpu
        store._maybe_to_gpu()
        return store

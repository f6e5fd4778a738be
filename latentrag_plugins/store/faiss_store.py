"""The embedded vector store: an exact inner-product FAISS index plus document texts and a manifest
(saved as a directory, see :mod:`.faiss_files`).

Searches run where :meth:`FaissStore.to` says: by default on the GPU when torch sees one and the
vectors fit (an exact matrix-product search, :mod:`.torch_search`), else on the CPU, where FAISS
answers small batches and a matrix product larger ones (one pass over the vectors per batch).
With faiss-gpu, FAISS searches on the GPU instead.

faiss is imported lazily, so ``import latentrag_plugins`` never needs it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import StoreError
from ..io_utils import atomic_path
from ..results import RetrievedDoc
from .base import Encoder, check_compatible
from .corpus import read_docs_jsonl, write_docs_jsonl
from .embedding import embed_into
from .faiss_files import (
    DOCS_FILE,
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST_FILE,
    read_index,
    read_manifest,
    refusal,
)
from .faiss_files import import_faiss as _faiss
from .placement import GPU_MEMORY_FRACTION, check_request, place_search
from .rwlock import ReadWriteLock
from .torch_search import TorchSearch
from .vectors import as_matrix, document_matrix, query_matrix

logger = logging.getLogger(__name__)

__all__ = ["FaissStore", "refusal"]

GPU_MAX_K = 2048  # faiss GPU indexes return at most this many neighbours
TORCH_MIN_BATCH = 3  # on the CPU, batches of at least this many queries use the matrix product


def _gpu_available(faiss: Any) -> bool:
    """True if this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FaissStore:
    """Exact inner-product search over L2-normalised document embeddings (cosine similarity).

    Implements the :class:`~latentrag_plugins.store.base.VectorStore` protocol. Scores are inner
    products, higher is better. Searching from several threads at once is safe, also while
    another thread adds documents (an add waits for the searches in flight, and they for it).

    Attributes:
        encoder_id: Id of the encoder that made the vectors.
        dim: Embedding dimension.
        metric: Always ``"inner_product"``.
        normalized: Always True: vectors are L2-normalised.
    """

    metric: str = "inner_product"
    normalized: bool = True

    def __init__(
        self,
        encoder_id: str,
        dim: int,
        *,
        use_gpu: bool | None = None,
        search_device: str | torch.device | None = "auto",
        search_dtype: str | torch.dtype | None = None,
    ) -> None:
        """Create an empty store for ``dim``-dim vectors of encoder ``encoder_id``.

        Args:
            encoder_id: Id of the encoder that makes the vectors.
            dim: Embedding dimension.
            use_gpu: Move the FAISS index to GPU 0 after build / load (needs faiss-gpu): True,
                False, or None (auto: if this faiss build has GPU support and sees a GPU).
            search_device: Where searches run without faiss-gpu (see :meth:`to`): ``"auto"``
                (a CUDA GPU if the vectors fit, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:i"``.
            search_dtype: The vectors' dtype on a GPU: ``"float16"`` (None), ``"bfloat16"`` or
                ``"float32"``. The CPU always searches float32 vectors.

        Raises:
            StoreError: ``dim`` is not positive.
            ValueError: An unknown device or dtype, or a CUDA device on a machine without CUDA.
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
        check_request(search_device, search_dtype)
        self._want_device = search_device
        self._want_dtype = search_dtype
        self._memory_fraction = GPU_MEMORY_FRACTION
        self._torch: TorchSearch | None = None  # the matrix-product search, once placed
        self._placed = False  # False: (re)place the torch search before the next search
        self._lock = ReadWriteLock()  # searches read; add, placement and to() write
        self._name = f"FaissStore (encoder {self.encoder_id!r})"  # for messages

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
        search_device: str | torch.device | None = "auto",
        search_dtype: str | torch.dtype | None = None,
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
            search_device: See :meth:`__init__`.
            search_dtype: See :meth:`__init__`.

        Returns:
            The new store.

        Raises:
            StoreError: If there are no documents, ids repeat, or the encoder returns a bad shape.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        where = {"search_device": search_device, "search_dtype": search_dtype}
        store = cls(encoder.encoder_id, encoder.dim, use_gpu=False, **where)
        embed_into(
            store, encoder, docs, batch_size=batch_size, show_progress=show_progress,
            chunk_size=chunk_size,
        )  # fmt: skip
        if len(store) == 0:
            raise StoreError("no documents to index (the corpus is empty)")
        store._settle(use_gpu)
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
        search_device: str | torch.device | None = "auto",
        search_dtype: str | torch.dtype | None = None,
    ) -> FaissStore:
        """Make a store from precomputed vectors (fast path for large or synthetic stores).

        Arguments are those of :meth:`__init__` and :meth:`add`. The store may be empty (N == 0).
        """
        store = cls(
            encoder_id, dim, use_gpu=False, search_device=search_device, search_dtype=search_dtype
        )
        store.add(ids, texts, embeddings, metadata=metadata, normalize=normalize)
        store._settle(use_gpu)
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
        n = len(ids)
        emb = document_matrix(embeddings, n, self.dim, normalize=normalize)  # (N, dim)
        if len(texts) != n or (metadata is not None and len(metadata) != n):
            raise StoreError(f"got {n} ids but {len(texts)} texts / metadata of another length")
        if n == 0:
            return
        new_ids = list(map(str, ids))
        with self._lock.write():  # (FAISS may move its vectors: no search may read them now)
            uniq = set(new_ids)
            if len(uniq) != n or not uniq.isdisjoint(self._ids):
                seen = set(self._ids)
                for doc_id in new_ids:
                    if doc_id in seen:
                        raise StoreError(f"duplicate document id {doc_id!r}")
                    seen.add(doc_id)
            self._index.add(emb)
            self._ids.extend(new_ids)
            self._texts.extend(map(str, texts))
            if metadata is not None and any(metadata):
                if self._meta is None:  # first metadata: backfill empty dicts for earlier docs
                    self._meta = [{} for _ in range(len(self._ids) - n)]
                self._meta.extend(dict(m or {}) for m in metadata)
            elif self._meta is not None:
                self._meta.extend({} for _ in range(n))
            self._torch, self._placed = None, False

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

    @property
    def search_device(self) -> torch.device:
        """Where searches run now (a batch of one runs in FAISS when this is the CPU)."""
        if self.on_gpu:
            return torch.device("cuda", 0)
        return self._torch.device if self._torch is not None else torch.device("cpu")

    def to(
        self,
        device: str | torch.device,
        *,
        dtype: str | torch.dtype | None = None,
        memory_fraction: float | None = None,
    ) -> FaissStore:
        """Search on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:i"``, ``"auto"``) from now on.

        On a GPU the vectors are copied there once, in ``dtype`` (default float16). If they, with
        one chunk of scores, would take more than ``memory_fraction`` (default 0.5) of the GPU's
        free memory, a warning says how much they need and searches stay on the CPU. With
        faiss-gpu, ``"cpu"`` moves the FAISS index back to the CPU.

        Returns:
            The store.

        Raises:
            ValueError: An unknown device or dtype, or a CUDA device on a machine without CUDA.
        """
        check_request(device, dtype)
        with self._lock.write():
            if self.on_gpu and str(device) == "cpu":
                self._index, self._gpu_res = self._cpu_index(), None
            self._want_device = device
            self._want_dtype = dtype if dtype is not None else self._want_dtype
            if memory_fraction is not None:
                self._memory_fraction = float(memory_fraction)
            self._place()
        return self

    def _settle(self, use_gpu: bool | None) -> None:
        """After build or load: move the index to faiss-gpu if asked, then place the search."""
        self._use_gpu = use_gpu
        with self._lock.write():
            self._maybe_to_gpu()
            self._place()

    def _place(self) -> None:
        """Set up the matrix-product search where asked (call under the write lock)."""
        self._torch = None  # (frees the old GPU copy before the new one is made)
        flat = isinstance(self._index, _faiss().IndexFlat)  # (not some other saved index)
        if flat and not self.on_gpu and len(self) > 0:
            self._torch = place_search(
                self._matrix(),
                self._want_device,
                self._want_dtype,
                memory_fraction=self._memory_fraction,
                owner=self._index,
                name=self._name,
            )
        self._placed = True

    def _matrix(self) -> np.ndarray:
        """The CPU index's vectors (N, dim), a view of FAISS's memory: valid until an add."""
        n = self._index.ntotal
        return _faiss().rev_swig_ptr(self._index.get_xb(), n * self.dim).reshape(n, self.dim)

    # ---------------------------------------------------------------- search

    def __len__(self) -> int:
        """Number of documents in the store."""
        return len(self._ids)

    def __repr__(self) -> str:
        dev = "faiss-gpu" if self.on_gpu else str(self.search_device)
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
        q = as_matrix(embedding, "query embedding")
        if q.ndim == 2 and q.shape[0] == 1:
            q = q[0]
        if q.ndim != 1:
            raise StoreError(
                f"search() takes one query embedding of shape ({self.dim},), got shape {q.shape}; "
                "use search_batch() for several"
            )
        return self.search_batch(q[None, :], k)[0]

    def search_batch(self, embeddings: Any, k: int) -> list[list[RetrievedDoc]]:
        """Return the top-``k`` documents for each query of ``embeddings`` (B, dim); see search.

        One call reads the vectors once for the whole batch: batch concurrent queries into one
        call rather than calling :meth:`search` for each.
        """
        q = query_matrix(embeddings, self.dim, self.encoder_id)  # (B, dim)
        if len(self) == 0:
            raise StoreError("the store is empty: index some documents first")
        if int(k) < 1:
            raise StoreError(f"k must be at least 1, got {k}")
        if q.shape[0] == 0:
            return []
        if not self._placed:  # (new documents since the last search)
            with self._lock.write():
                if not self._placed:
                    self._place()
        with self._lock.read():
            search = self._torch
            if search is not None and (search.device.type != "cpu" or len(q) >= TORCH_MIN_BATCH):
                scores, idx = search.search(q, k)  # (B, k), (B, k)
            else:
                scores, idx = self._faiss_search(q, k)
            return self._docs(scores, idx)

    def _faiss_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The plain FAISS search of checked float32 ``queries`` (B, dim): ``(scores, indices)``,
        each (B, min(k, N)) (FAISS-GPU returns at most 2048). Hold the read lock."""
        k = min(int(k), len(self))
        if self.on_gpu and k > GPU_MAX_K:
            logger.warning("FaissStore: k=%d clamped to %d on the GPU", k, GPU_MAX_K)
            k = GPU_MAX_K
        return self._index.search(queries, k)  # (B, k), (B, k)

    def _docs(self, scores: np.ndarray, idx: np.ndarray) -> list[list[RetrievedDoc]]:
        """The documents at ``idx`` (B, k) with their ``scores`` (B, k), row by row."""
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
        search_device: str | torch.device | None = "auto",
        search_dtype: str | torch.dtype | None = None,
    ) -> FaissStore:
        """Load a store saved by :meth:`save`.

        Args:
            path: The store directory.
            encoder_id: If given, the store must have been built with this encoder.
            dim: If given, the store must hold vectors of this dimension.
            use_gpu: See :meth:`__init__`.
            search_device: See :meth:`__init__` (``"auto"``: the GPU when the vectors fit).
            search_dtype: See :meth:`__init__`.

        Returns:
            The store.

        Raises:
            StoreError: If a file is missing or corrupt (the message names it).
            EncoderMismatchError: If ``encoder_id`` or ``dim`` differ from the manifest's.
        """
        root, enc_id, store_dim, count = read_manifest(path)
        store = cls(
            enc_id, store_dim, use_gpu=False, search_device=search_device, search_dtype=search_dtype
        )
        store._name = f"FaissStore at {root}"
        if encoder_id is not None or dim is not None:
            check_compatible(
                store,
                encoder_id if encoder_id is not None else store.encoder_id,
                dim if dim is not None else store.dim,
            )
        store._index = read_index(root, store.dim, count)
        store._ids, store._texts, store._meta = read_docs_jsonl(root / DOCS_FILE, count)
        store._settle(use_gpu)
        return store

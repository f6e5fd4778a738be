"""Exact inner-product top-k search with torch: one matrix product and a top-k per chunk of vectors.

A batch of queries reads the vectors once, on the CPU or on a GPU. In float32 the result is the
exact top-k (the same documents as a FAISS ``IndexFlatIP``, up to ties). In float16 or bfloat16
(half the memory, the default on a GPU) the vectors are rounded, candidates are chosen by the
rounded product and re-scored in float32, so scores differ from float32 ones by that rounding only.
On a GPU, float32 candidates are re-scored too: the product may run in TF32 where torch allows it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

RESCORE_MARGIN = 48  # extra candidates kept before re-scoring low-precision products
CPU_SCORE_BYTES = 32 << 20  # score matrix per chunk on the CPU
GPU_SCORE_BYTES = 512 << 20  # score matrix per chunk on a GPU

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def search_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype vectors are kept in: ``dtype``, else float16 on a GPU and float32 on the CPU.

    Raises:
        ValueError: ``dtype`` is not float32, float16 or bfloat16.
    """
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        dtype = _DTYPES.get(dtype.removeprefix("torch."), dtype)  # type: ignore[arg-type]
    if dtype not in _DTYPES.values():
        raise ValueError(f"search dtype must be float32, float16 or bfloat16, not {dtype!r}")
    return dtype  # type: ignore[return-value]


class TorchSearch:
    """Exact top-k inner-product search over a fixed (N, dim) matrix held by torch.

    Safe to call from several threads at once: it never changes after construction.

    Attributes:
        vectors: The (N, dim) matrix, on :attr:`device` in :attr:`dtype`.
    """

    def __init__(
        self,
        vectors: Any,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        owner: Any = None,
    ) -> None:
        """Hold ``vectors`` (a numpy array or tensor of shape (N, dim)) on ``device``.

        On the CPU a float32 C-contiguous numpy array is shared, not copied.

        Args:
            vectors: The document vectors.
            device: Where to search.
            dtype: ``"float32"``, ``"float16"``, ``"bfloat16"`` (or the torch dtype); None:
                float16 on a GPU, float32 on the CPU.
            owner: The object that owns a shared array's memory, kept alive with the search.
        """
        self._owner = owner
        dev = torch.device(device)
        want = search_dtype(dtype, dev)
        t = torch.from_numpy(vectors) if isinstance(vectors, np.ndarray) else vectors
        if t.ndim != 2:
            raise ValueError(f"vectors must have shape (N, dim), got {tuple(t.shape)}")
        self.vectors: torch.Tensor = t.detach().to(dev, want).contiguous()  # (N, dim)

    @property
    def device(self) -> torch.device:
        """Where the vectors are and the search runs."""
        return self.vectors.device

    @property
    def dtype(self) -> torch.dtype:
        """The vectors' dtype."""
        return self.vectors.dtype

    @property
    def exact(self) -> bool:
        """True when the vectors are float32 (not rounded)."""
        return self.dtype == torch.float32

    @property
    def rescores(self) -> bool:
        """True when candidates are re-scored in float32: rounded vectors, or a GPU."""
        return not self.exact or self.device.type != "cpu"

    @property
    def nbytes(self) -> int:
        """Bytes held by the vectors."""
        return self.vectors.numel() * self.vectors.element_size()

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def chunk_rows(self, batch: int) -> int:
        """Vectors scored per matrix product for a batch of ``batch`` queries."""
        budget = GPU_SCORE_BYTES if self.device.type == "cuda" else CPU_SCORE_BYTES
        return max(1024, budget // (4 * max(1, batch)))

    @torch.inference_mode()
    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top-``k`` vectors by inner product for each query, best first.

        Args:
            queries: (b, dim) query vectors (float32 numpy array or tensor, any device).
            k: Results per query, at least 1; clamped to N.

        Returns:
            ``(scores, indices)``: float32 and int64 numpy arrays of shape (b, min(k, N)).
        """
        n = len(self)
        k = min(int(k), n)
        want = min(n, 2 * k + RESCORE_MARGIN) if self.rescores else k  # candidates to keep
        q32 = torch.as_tensor(queries).to(self.device, torch.float32)  # (b, dim)
        q = q32.to(self.dtype)
        rows = max(want, self.chunk_rows(q.shape[0]))
        vals: list[torch.Tensor] = []
        idx: list[torch.Tensor] = []
        on_cpu = self.device.type == "cpu"
        for start in range(0, n, rows):
            chunk = self.vectors[start : start + rows]  # (c, dim)
            # (MKL, torch's CPU BLAS, multiplies a few queries much faster in this order.)
            scores = (chunk @ q.T).T if on_cpu else q @ chunk.T  # (b, c)
            v, i = scores.topk(min(want, scores.shape[1]), dim=1)  # (b, w), (b, w)
            vals.append(v)
            idx.append(i + start)
        v, i = vals[0], idx[0]
        if len(vals) > 1:
            v, pos = torch.cat(vals, dim=1).topk(want, dim=1)  # (b, want)
            i = torch.cat(idx, dim=1).gather(1, pos)  # (b, want)
        if self.rescores:
            v, i = self._rescore(q32, i, k)
        return v.float().cpu().numpy(), i.cpu().numpy()

    def _rescore(
        self, q32: torch.Tensor, cand: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score candidates ``cand`` (b, w) in float32 against ``q32`` (b, dim); keep the top k."""
        vecs = self.vectors[cand].float()  # (b, w, dim)
        scores = (vecs * q32[:, None, :]).sum(dim=2)  # (b, w); no matmul, so never TF32
        v, pos = scores.topk(k, dim=1)  # (b, k)
        return v, cand.gather(1, pos)

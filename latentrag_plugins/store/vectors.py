"""Checks on the vectors that go into a store (documents) and the ones it is searched with
(queries): float32 matrices of the store's dimension, finite, documents L2-normalised."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import StoreError


def as_matrix(x: Any, name: str) -> np.ndarray:
    """Turn a numpy array or torch tensor into a C-contiguous float32 numpy array."""
    if hasattr(x, "detach"):  # torch tensor (any device / dtype)
        x = x.detach().float().cpu().numpy()
    try:
        return np.ascontiguousarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{name} must be a numeric array: {exc}") from None


def row_norms(x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """L2 norms of the rows of ``x`` (N, dim) -> (N,), in chunks to bound temporary memory."""
    out = np.empty(x.shape[0], dtype=np.float32)  # (N,)
    for i in range(0, x.shape[0], chunk):
        part = x[i : i + chunk]  # (c, dim)
        out[i : i + chunk] = np.sqrt(np.einsum("ij,ij->i", part, part))
    return out


def document_matrix(embeddings: Any, n: int, dim: int, *, normalize: bool) -> np.ndarray:
    """``embeddings`` as a float32 (n, dim) matrix of unit rows.

    Args:
        embeddings: Array or tensor, one row per document.
        n: The number of documents.
        dim: The store's dimension.
        normalize: L2-normalise the rows (else they must be unit rows already).

    Raises:
        StoreError: Another shape, NaN or infinite values, or rows that are not unit length.
    """
    emb = as_matrix(embeddings, "embeddings")  # (n, dim)
    if n == 0 and emb.size == 0:
        return emb.reshape(0, dim)  # e.g. an empty list
    if emb.ndim != 2 or emb.shape[0] != n or (n and emb.shape[1] != dim):
        raise StoreError(
            f"embeddings have shape {emb.shape}; expected ({n}, {dim}) for {n} ids "
            f"(store dim {dim})"
        )
    norms = row_norms(emb)  # (n,); NaN / inf if a row has NaN / inf
    if not np.isfinite(norms).all():
        raise StoreError("embeddings contain NaN or infinite values")
    if normalize:
        return emb / np.maximum(norms, 1e-12)[:, None]  # (n, dim), a copy
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise StoreError(
            "embeddings are not L2-normalised (norms from "
            f"{norms.min():.4g} to {norms.max():.4g}); pass normalize=True"
        )
    return emb


def query_matrix(embeddings: Any, dim: int, encoder_id: str) -> np.ndarray:
    """``embeddings`` as a float32 (B, dim) query matrix.

    Raises:
        StoreError: Not 2-D, another dimension (naming both), or NaN / infinite values.
    """
    q = as_matrix(embeddings, "query embeddings")  # (B, dim)
    if q.ndim != 2:
        raise StoreError(f"search_batch() takes shape (B, {dim}), got shape {q.shape}")
    if q.shape[1] != dim:
        raise StoreError(
            f"query embedding has dimension {q.shape[1]}, but the store holds {dim}-dim "
            f"vectors (encoder {encoder_id!r})"
        )
    if not np.isfinite(q).all():
        raise StoreError("query embedding contains NaN or infinite values")
    return q

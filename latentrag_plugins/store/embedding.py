"""Embedding a stream of documents into a store, a chunk at a time, under one progress bar."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

from .. import threads
from ..errors import StoreError
from .base import Encoder
from .vectors import as_matrix


def embed_into(
    store: Any,
    encoder: Encoder,
    docs: Iterable[Any],
    *,
    batch_size: int,
    show_progress: bool,
    chunk_size: int,
) -> None:
    """Embed ``docs`` with ``encoder`` and :meth:`add` them to ``store``, ``chunk_size`` at a time.

    Args:
        store: The store (``dim`` and ``add(ids, texts, embeddings, metadata=...)``).
        encoder: The document tower (``encoder_id``, ``dim``, ``embed_documents``).
        docs: Objects with ``id`` and ``text`` (and optionally ``metadata``): a list or a stream.
        batch_size: Encoder batch size.
        show_progress: Show a progress bar over documents.
        chunk_size: Documents embedded and added per chunk.

    Raises:
        StoreError: The encoder returns an array of the wrong shape.
    """
    total = len(docs) if hasattr(docs, "__len__") else None  # type: ignore[arg-type]
    device = getattr(encoder, "device", "cpu")
    it = iter(docs)
    with tqdm(total=total, desc="Embedding", unit="doc", disable=not show_progress) as bar:
        while chunk := list(itertools.islice(it, max(1, chunk_size))):
            texts = [str(d.text) for d in chunk]
            embed = functools.partial(
                encoder.embed_documents, texts, batch_size=batch_size, show_progress=False
            )
            vectors = threads.apart(embed, device)  # off the caller's thread (see there)
            emb = as_matrix(vectors, "encoder output")  # (n, dim)
            if emb.shape != (len(chunk), store.dim):
                raise StoreError(
                    f"encoder {encoder.encoder_id!r} returned an array of shape {emb.shape} "
                    f"for {len(chunk)} documents; expected ({len(chunk)}, {store.dim})"
                )
            metas = [getattr(d, "metadata", None) or {} for d in chunk]
            store.add([str(d.id) for d in chunk], texts, emb, metadata=metas)
            bar.update(len(chunk))

"""Rows' KV caches kept apart between passes, and batches assembled from them for one pass.

The engine runs each pass over whichever requests are ready, so a request's cache cannot live
in one fixed batch. Between passes each row keeps a compact cache (:class:`RowKV`: every cached
position is real, no padding). A pass assembles the rows it feeds into a
:class:`~latentrag_plugins.context.BatchedContext` (left-padded, masked, as a batch built from
the start would be: keys carry their rotary positions, so alignment changes nothing), and
:func:`split` gives each row its compact cache back, without the positions the pass dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicLayer

from ..context import BatchedContext


@dataclass
class RowKV:
    """One row's KV cache, compact: every cached position is real.

    Attributes:
        keys: Per layer ``(1, kv_heads, L, hd)``; empty before the first feed.
        values: Per layer ``(1, kv_heads, L, hd)``.
        pos: The next position id.
        tokens: The ids of the ``L`` cached positions, in order (-1 for fed embeddings).
    """

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    pos: int = 0
    tokens: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Cached positions."""
        return len(self.tokens)


def open_context(
    llm: torch.nn.Module,
    pad_id: int,
    wide: torch.nn.Module | None,
    rows: list[RowKV],
    width: int,
) -> BatchedContext:
    """A context holding ``rows``' caches, in the dtype of a pass feeding ``width`` tokens."""
    ctx = BatchedContext(llm, len(rows), pad_id, wide)
    return assemble(ctx, rows, ctx.pass_dtype(width))


def assemble(
    ctx: BatchedContext, rows: list[RowKV], dtype: torch.dtype | None = None
) -> BatchedContext:
    """Load ``rows`` into the fresh context ``ctx`` (one row each, in order), left-padded.

    Args:
        ctx: A new :class:`BatchedContext` with ``len(rows)`` rows.
        rows: The rows' caches.
        dtype: Cache dtype for the coming pass (default: the LLM's).
    """
    width = max(r.length for r in rows)
    ctx.tokens = [list(r.tokens) for r in rows]
    ctx.next_pos = torch.tensor([r.pos for r in rows], dtype=torch.long, device=ctx.device)
    if width == 0:
        return ctx
    dtype = dtype or ctx.embed.weight.dtype
    sample = next(r for r in rows if r.length)
    for layer in range(len(sample.keys)):
        keys = _stack([r.keys[layer] if r.length else None for r in rows], width, dtype)
        values = _stack([r.values[layer] if r.length else None for r in rows], width, dtype)
        cache_layer = DynamicLayer()
        cache_layer.lazy_initialization(keys, values)
        cache_layer.keys, cache_layer.values = keys, values
        ctx.cache.layers.append(cache_layer)
    lengths = torch.tensor([r.length for r in rows], device=ctx.device)  # (B,)
    cols = torch.arange(width, device=ctx.device)  # (L,)
    ctx.mask = (cols[None, :] >= width - lengths[:, None]).long()  # (B, L)
    ctx._cache_dtype = dtype
    return ctx


def _stack(parts: list[torch.Tensor | None], width: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-row ``(1, H, L_i, hd)`` tensors (None: empty) -> one left-padded ``(B, H, L, hd)``."""
    like = next(p for p in parts if p is not None)
    if len(parts) == 1:
        return like.to(dtype)
    out = like.new_zeros(len(parts), like.shape[1], width, like.shape[3], dtype=dtype)
    for i, part in enumerate(parts):
        if part is not None:
            out[i, :, width - part.shape[2] :] = part
    return out


def split(ctx: BatchedContext) -> list[RowKV]:
    """Each row's compact cache after a pass: its real (unmasked) positions, in order.

    A row whose real positions are contiguous keeps a view of the batch's tensors; other rows
    get a copy of theirs.
    """
    layers = [x for x in getattr(ctx.cache, "layers", []) if getattr(x, "keys", None) is not None]
    mask = ctx.mask.to("cpu")  # (B, L)
    next_pos = ctx.next_pos.tolist()
    out = []
    for i in range(ctx.batch):
        cols = mask[i].nonzero().squeeze(1)  # (n,) real columns
        row = RowKV(pos=int(next_pos[i]), tokens=list(ctx.tokens[i]))
        if len(cols):
            first, last = int(cols[0]), int(cols[-1])
            if last - first + 1 == len(cols):
                pick = lambda t, i=i, a=first, b=last + 1: t[i : i + 1, :, a:b]  # noqa: E731
            else:
                idx = cols.to(ctx.device)
                pick = lambda t, i=i, idx=idx: t[i : i + 1].index_select(2, idx)  # noqa: E731
            row.keys = [pick(x.keys) for x in layers]
            row.values = [pick(x.values) for x in layers]
        if len(row.tokens) != len(cols):
            raise RuntimeError("a row's token trace and its cache disagree")  # a bug, not input
        out.append(row)
    return out

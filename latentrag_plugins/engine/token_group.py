"""The rows writing one token per pass, kept in a preallocated cache between passes.

A token pass reads every cached position of its rows; assembling them into a fresh batch each
pass (and growing it by concatenation, as ``DynamicCache`` does) would copy every row's whole
cache twice per token. A :class:`TokenGroup` keeps its rows in the slots ``0..n-1`` of fixed
per-layer buffers instead: a row's cache is copied in once when it starts writing and out once
when it stops (or dropped when it ends); each pass writes one key and value per row in place and
attends to the first ``max(length) + 1`` columns, its rows' real positions left-aligned and the
rest masked. Rows that end leave at once (the last slot moves into the hole), so no pass feeds
padding rows.

It runs on the lean decoder (:mod:`latentrag_plugins.speed.lean_decoder`), so only where that applies;
elsewhere token passes assemble their rows as wide passes do.
"""

from __future__ import annotations

from typing import Any

import torch

from ..context import BatchedContext
from ..speed.lean_decoder import lean_forward
from ..speed.lean_decoder import supports as lean_supports
from .rows import RowKV

_GROW = 256  # columns are allocated in steps of this many positions


class _Slots:
    """The cache object the lean decoder writes to: one new position per row, in place."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.keys, self.values = keys, values  # per layer (S, H, L, hd) buffers
        self.rows = 0  # slots in use (0..rows-1)
        self.at: torch.Tensor | None = None  # (rows,) column each row writes this pass
        self.width = 0  # columns this pass attends to

    def update(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, ...]:
        """Write this pass's keys and values ``(rows, H, 1, hd)``; return what it attends to."""
        slot = torch.arange(self.rows, device=k.device)
        keys, values = self.keys[layer][: self.rows], self.values[layer][: self.rows]
        keys[slot, :, self.at] = k[:, :, 0].to(keys.dtype)  # (rows, H, hd)
        values[slot, :, self.at] = v[:, :, 0].to(values.dtype)
        return keys[:, :, : self.width], values[:, :, : self.width]


class TokenGroup:
    """Requests writing tokens, each in a slot of a preallocated KV cache.

    Args:
        llm: The causal LM (its decoder, input embedding and LM head).
        pad_id: Token id fed by nobody (kept for symmetry with wide passes).
    """

    def __init__(self, llm: Any, pad_id: int) -> None:
        self.llm = llm
        self.ctx = BatchedContext(llm, 1, pad_id)  # for its LM head and embedding
        self.members: list[Any] = []  # requests, in slot order
        self.length: list[int] = []  # real cached positions per slot
        self.pos: list[int] = []  # next position id per slot
        self.tokens: list[list[int]] = []  # token trace per slot
        self._slots: _Slots | None = None

    @staticmethod
    def applies(llm: Any) -> bool:
        """Whether token passes of ``llm`` can run in a group (the lean decoder applies)."""
        return lean_supports(llm.get_decoder())

    # ------------------------------------------------------------------ membership
    @torch.inference_mode()
    def hold(self, reqs: list[Any]) -> None:
        """Make the group hold exactly ``reqs``: others leave (their caches copied back into
        their ``kv``), new ones join (their ``kv`` copied in)."""
        keep = {id(r) for r in reqs}
        for r in [m for m in self.members if id(m) not in keep]:
            self.release(r)
        present = {id(m) for m in self.members}
        for r in reqs:
            if id(r) not in present:
                self._join(r)

    def __contains__(self, req: Any) -> bool:
        return any(m is req for m in self.members)

    @torch.inference_mode()
    def release(self, req: Any, keep_cache: bool = True) -> None:
        """Take ``req`` out of the group: its cache goes back into ``req.kv`` (without the
        tensors when ``keep_cache`` is False: it ended, only its token trace is read)."""
        i = next(j for j, m in enumerate(self.members) if m is req)
        if keep_cache:
            req.kv = self._row(i)
        else:
            req.kv = RowKV(pos=self.pos[i], tokens=list(self.tokens[i]))
        last = len(self.members) - 1
        if i != last:  # the last slot moves into the hole
            self._move(last, i)
        for seq in (self.members, self.length, self.pos, self.tokens):
            seq.pop()

    def _join(self, req: Any) -> None:
        kv: RowKV = req.kv
        i = len(self.members)
        self._fit(i + 1, kv.length + 1, kv)
        assert self._slots is not None
        for buf, part in ((self._slots.keys, kv.keys), (self._slots.values, kv.values)):
            for layer, x in enumerate(part):
                buf[layer][i, :, : kv.length] = x[0]
        self.members.append(req)
        self.length.append(kv.length)
        self.pos.append(kv.pos)
        self.tokens.append(list(kv.tokens))
        req.kv = RowKV(pos=kv.pos)  # the cache lives in the group now

    def _row(self, i: int) -> RowKV:
        """Slot ``i``'s cache as a compact row (a copy: the slot will be reused)."""
        assert self._slots is not None
        n = self.length[i]
        keys = [buf[i : i + 1, :, :n].clone() for buf in self._slots.keys]
        values = [buf[i : i + 1, :, :n].clone() for buf in self._slots.values]
        return RowKV(keys=keys, values=values, pos=self.pos[i], tokens=list(self.tokens[i]))

    def _move(self, src: int, dst: int) -> None:
        assert self._slots is not None
        n = self.length[src]
        for buf in (*self._slots.keys, *self._slots.values):
            buf[dst, :, :n] = buf[src, :, :n]
        for seq in (self.members, self.length, self.pos, self.tokens):
            seq[dst] = seq[src]

    def _fit(self, rows: int, columns: int, like: RowKV) -> None:
        """Grow the buffers to hold ``rows`` slots of ``columns`` positions."""
        s = self._slots
        have_rows = s.keys[0].shape[0] if s is not None else 0
        have_cols = s.keys[0].shape[2] if s is not None else 0
        if s is not None and rows <= have_rows and columns <= have_cols:
            return
        rows, columns = max(rows, 2 * have_rows), max(have_cols, -(-columns // _GROW) * _GROW)
        sample = like.keys[0] if like.keys else None
        decoder = self.llm.get_decoder()
        cfg = decoder.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        weight = self.ctx.embed.weight
        dtype, device = weight.dtype, weight.device
        if sample is not None:
            heads, head_dim = sample.shape[1], sample.shape[3]

        def grown(old: torch.Tensor | None) -> torch.Tensor:
            new = torch.zeros(rows, heads, columns, head_dim, dtype=dtype, device=device)
            if old is not None:
                new[: old.shape[0], :, : old.shape[2]] = old
            return new

        layers = cfg.num_hidden_layers
        keys = [grown(s.keys[i] if s else None) for i in range(layers)]
        values = [grown(s.values[i] if s else None) for i in range(layers)]
        self._slots = _Slots(keys, values)

    # ------------------------------------------------------------------ passes
    @torch.inference_mode()
    def feed(self, tokens: dict[int, int]) -> None:
        """Feed one token per member (``{id(request): token}``) in one pass; each member's
        ``logits`` become its next-token logits ``(V,)``, float32."""
        logits = self._feed([tokens[id(m)] for m in self.members])  # (n, V)
        for m, row in zip(self.members, logits):
            m.logits = row

    def _feed(self, tokens: list[int]) -> torch.Tensor:
        n = len(self.members)
        s = self._slots
        assert s is not None and len(tokens) == n
        self._fit(n, max(self.length) + 1, RowKV())
        s = self._slots
        device = self.ctx.device
        s.rows, s.width = n, max(self.length) + 1
        s.at = torch.tensor(self.length, device=device)  # (n,)
        ids = torch.tensor(tokens, device=device)[:, None]  # (n, 1)
        cols = torch.arange(s.width, device=device)  # (W,)
        mask = (cols[None, :] <= s.at[:, None]).long()  # (n, W): real positions and the new one
        pos = torch.tensor(self.pos, device=device)[:, None]  # (n, 1)
        embeds = self.ctx.embed(ids)  # (n, 1, d)
        hidden = lean_forward(self.llm.get_decoder(), embeds, mask, pos, s, keep=1)  # (n, 1, d)
        for i, tok in enumerate(tokens):
            self.length[i] += 1
            self.pos[i] += 1
            self.tokens[i].append(tok)
        return self.ctx.logits(hidden[:, -1].to(self.ctx.embed.weight.dtype))  # (n, V)

"""A batched, growing KV-cache context over a causal LM, and greedy generation on top of it.

Rows are questions (or decode items). Every feed left-pads the rows' new tokens to one width,
so real tokens are right-aligned; padding stays masked forever and positions only count real
tokens. Forgetting the last tokens crops the cache when all rows forget them, else masks them.
Shared by LatentRAG's loop, latent decoding and the explicit-agent baseline.

With a *wide twin* (a copy of the LLM in another dtype, e.g. bfloat16 beside a float32 LLM),
passes of ``WIDE_FROM`` or more new tokens run on the twin and the rest on the LLM; the cache is
cast when the dtype changes. On CPUs with native bfloat16 (AMX, AVX512-BF16), bfloat16 makes
passes over retrieved documents several times faster but token-by-token passes slower, so this
mixes the faster of each.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from transformers import DynamicCache, PreTrainedModel

from .extractive import SpanConstraint
from .speed.lean_decoder import lean_forward
from .speed.lean_decoder import supports as lean_supports
from .speed.packed_linear import plain_module

WIDE_FROM = 8  # passes feeding at least this many tokens per row run on the wide twin, if any


class _Parts(NamedTuple):
    decoder: torch.nn.Module
    head: torch.nn.Module
    embed: torch.nn.Module


def _parts(llm: PreTrainedModel) -> _Parts:
    return _Parts(llm.get_decoder(), llm.get_output_embeddings(), llm.get_input_embeddings())


class BatchedContext:
    """The KV cache, attention mask ``(B, L)`` and next position ``(B,)`` of a batch of rows.

    Args:
        llm: A causal LM (``get_decoder`` / ``get_output_embeddings``).
        batch: Number of rows.
        pad_id: Token id fed at padded positions (always masked).
        wide: Optional copy of ``llm`` in another dtype that runs the passes of ``WIDE_FROM`` or
            more tokens. Hidden states and logits are always in ``llm``'s dtype.
    """

    def __init__(
        self, llm: PreTrainedModel, batch: int, pad_id: int, wide: PreTrainedModel | None = None
    ) -> None:
        self.decoder, self.head, self.embed = self._narrow = _parts(llm)
        self._wide = _parts(wide) if wide is not None else None
        self.pad_id = pad_id
        self.device = self.embed.weight.device
        self.batch = batch
        self.cache = DynamicCache()
        if wide is not None and getattr(self.cache, "layers", None) is None:
            raise ValueError("a wide twin needs transformers >= 5 (DynamicCache.layers)")
        if self._wide is not None and self._wide.embed.weight.device != self.device:
            raise ValueError(
                f"the LLM is on {self.device} but its wide twin on "
                f"{self._wide.embed.weight.device}: move the model with to_device(), which moves both"
            )
        self.mask = torch.zeros(batch, 0, dtype=torch.long, device=self.device)  # (B, L)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=self.device)  # (B,)
        # Per row, the ids of its real cached positions in order (-1 where embeddings were fed).
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.passes = 0
        self._cache_dtype: torch.dtype | None = None  # of the last pass (None: empty cache)
        self._lean_ok: dict[int, bool] = {}  # id(decoder) -> lean_decoder.supports(decoder)

    def feed(
        self,
        chunks: list[list[int]],
        branch: int | Sequence[int] = 0,
        keep: int | None = None,
    ) -> torch.Tensor:
        """Feed one list of token ids per row (empty: nothing for that row) in one forward pass.

        Args:
            chunks: Token ids per row.
            branch: If positive, each row's last token is a branch: it skips the ``branch``
                tokens before it, in attention and in position, as if they were not there. One
                value for every row, or one per row (0: no branch). Check :attr:`can_branch`
                first.
            keep: Return only the last ``keep`` positions (the lean decoder then computes only
                those in its last layer); the cache gets every position either way.

        Returns:
            Last-layer hidden states ``(B, Lc, d)`` (``(B, keep, d)`` with ``keep``); each row's
            real tokens are right-aligned.
        """
        width = max(1, max(len(c) for c in chunks))
        ids = torch.tensor(
            [[self.pad_id] * (width - len(c)) + list(c) for c in chunks], device=self.device
        )  # (B, Lc)
        new = torch.tensor(
            [[0] * (width - len(c)) + [1] * len(c) for c in chunks], device=self.device
        )  # (B, Lc)
        parts = self._parts_for(width)
        for row, chunk in zip(self.tokens, chunks):
            row.extend(chunk)
        branches = [branch] * len(chunks) if isinstance(branch, int) else list(branch)
        return self._forward(parts, parts.embed(ids), new, branches, keep)

    def feed_embeds(
        self, embeds: torch.Tensor, new: torch.Tensor, keep: int | None = None
    ) -> torch.Tensor:
        """Feed input embeddings ``(B, Lc, d)`` with real-token mask ``new (B, Lc)`` (left-padded);
        ``keep`` as in :meth:`feed`."""
        parts = self._parts_for(embeds.shape[1])
        embeds = embeds.to(parts.embed.weight.dtype)
        for row, n in zip(self.tokens, new.sum(1).tolist()):
            row.extend([-1] * n)
        return self._forward(parts, embeds, new.to(self.device), keep=keep)

    def pass_dtype(self, width: int) -> torch.dtype:
        """The dtype a pass feeding ``width`` tokens per row runs in (and its cache is cast to)."""
        parts = self._narrow if self._wide is None or width < WIDE_FROM else self._wide
        return parts.embed.weight.dtype

    def _parts_for(self, width: int) -> _Parts:
        """The model that runs a pass of ``width`` tokens; casts the cache to its dtype."""
        if self._wide is None:
            return self._narrow
        parts = self._narrow if width < WIDE_FROM else self._wide
        dtype = parts.embed.weight.dtype
        if self._cache_dtype in (None, dtype):  # every pass writes every layer in its dtype
            return parts
        layers = [x for x in self.cache.layers if getattr(x, "keys", None) is not None]
        # The cast copies the cache anyway: drop the columns masked in every row (bucket
        # padding) on the way, so the token passes after it attend to less.
        keep = self.mask.any(0).nonzero().squeeze(1)  # (L',) columns some row still sees
        for layer in layers:
            layer.keys = layer.keys.index_select(-2, keep).to(dtype)
            layer.values = layer.values.index_select(-2, keep).to(dtype)
        self.mask = self.mask[:, keep]
        return parts

    @property
    def can_branch(self) -> bool:
        """Whether the LLM's attention takes the custom masks that :meth:`feed` branches need."""
        return getattr(self.decoder.config, "_attn_implementation", None) in ("sdpa", "eager")

    def _forward(
        self,
        parts: _Parts,
        embeds: torch.Tensor,
        new: torch.Tensor,
        branches: list[int] | None = None,
        keep: int | None = None,
    ) -> torch.Tensor:
        embeds, new = _pad_to_bucket(embeds, new)
        pos = (self.next_pos[:, None] + new.cumsum(1) - 1).clamp(min=0)  # (B, Lc)
        mask = torch.cat([self.mask, new], dim=1)  # (B, L + Lc)
        attn = mask
        if branches and any(branches):
            skip = torch.tensor(branches, device=self.device)  # (B,)
            pos[:, -1] = (pos[:, -1] - skip).clamp(min=0)
            attn = self._branch_mask(mask, new.shape[1], branches, embeds.dtype)  # (B,1,Lc,L+Lc)
        if self._lean(parts.decoder):
            hidden = lean_forward(parts.decoder, embeds, attn, pos, self.cache, keep)
        else:
            hidden = parts.decoder(
                inputs_embeds=embeds,
                attention_mask=attn,
                position_ids=pos,
                use_cache=True,
                **{_cache_keyword(parts.decoder): self.cache},
            ).last_hidden_state
            hidden = hidden if keep is None else hidden[:, -keep:]
        self.mask = mask
        self.next_pos = self.next_pos + new.sum(1)
        self.passes += 1
        self._cache_dtype = embeds.dtype
        return hidden.to(self.embed.weight.dtype)

    def _lean(self, decoder: torch.nn.Module) -> bool:
        """Whether passes of ``decoder`` take the lean forward (checked once per context)."""
        if id(decoder) not in self._lean_ok:
            self._lean_ok[id(decoder)] = lean_supports(decoder)
        return self._lean_ok[id(decoder)]

    def _branch_mask(
        self, mask: torch.Tensor, width: int, branches: list[int], dtype: torch.dtype
    ) -> torch.Tensor:
        """The 4D attention mask of a pass whose rows' last tokens skip the ``branches[row]``
        tokens before them."""
        total = mask.shape[1]
        q = torch.arange(total - width, total, device=self.device)[:, None]  # (Lc, 1)
        k = torch.arange(total, device=self.device)[None, :]  # (1, L + Lc)
        seen = (k <= q) & mask.bool()[:, None, :]  # (B, Lc, L + Lc)
        for row, branch in enumerate(branches):
            if branch > 0:
                seen[row, -1, total - 1 - branch : total - 1] = False
        seen |= k == q  # every query sees itself, so padding rows never attend to nothing
        # Additive, so sdpa does not convert a boolean mask again in every layer.
        sdpa = self.decoder.config._attn_implementation == "sdpa"
        fill = float("-inf") if sdpa else torch.finfo(dtype).min
        bias = torch.zeros(seen.shape, dtype=dtype, device=self.device)
        return bias.masked_fill_(~seen, fill)[:, None]

    def drop_last(self, n: int, rows: list[int], keep: int = 0) -> None:
        """Forget ``n`` fed positions of ``rows``, ending ``keep`` positions before the last one
        (cut from the cache if all rows forget them, else masked)."""
        if not rows or n <= 0:
            return
        end = self.mask.shape[1] - keep
        layers = getattr(self.cache, "layers", None)
        if len(rows) == self.batch and (keep == 0 or layers is not None):
            if keep == 0:
                self.cache.crop(-n)  # negative: remove n tokens (transformers 4 and 5)
            else:
                for layer in layers:
                    if getattr(layer, "keys", None) is None:
                        continue
                    layer.keys = torch.cat(
                        [layer.keys[..., : end - n, :], layer.keys[..., end:, :]], -2
                    )
                    layer.values = torch.cat(
                        [layer.values[..., : end - n, :], layer.values[..., end:, :]], -2
                    )
            self.mask = torch.cat([self.mask[:, : end - n], self.mask[:, end:]], dim=1)
        else:
            self.mask[rows, end - n : end] = 0
        for row in rows:
            tokens = self.tokens[row]
            del tokens[len(tokens) - n - keep : len(tokens) - keep]
        self.next_pos[rows] -= n

    def logits(self, h: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """LM-head logits of hidden states ``(..., d)`` -> ``(..., V)`` float32, or only the
        vocabulary ``rows``: ``(..., len(rows))`` (computed alone on CPU, where the full head
        is a real cost; elsewhere sliced from it, as training computes them)."""
        head = self.head
        alone = h.device.type == "cpu" and type(head) is torch.nn.Linear and plain_module(head)
        if rows is None or not alone:
            out = head(h).float()  # (..., V)
            return out if rows is None else out[..., rows]
        bias = None if head.bias is None else head.bias[rows]
        return torch.nn.functional.linear(h, head.weight[rows], bias).float()  # (..., len(rows))


@functools.cache
def _cache_keyword_of(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_keyword(decoder: torch.nn.Module) -> str:
    """The name under which ``decoder.forward`` takes its KV cache (``cache`` in recent
    transformers, ``past_key_values`` before)."""
    return _cache_keyword_of(type(decoder))


BUCKET = 32  # bfloat16/float16 CPU passes are left-padded to a multiple of this width


def _pad_to_bucket(embeds: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad a multi-token bfloat16/float16 CPU pass to a multiple of ``BUCKET`` tokens.

    oneDNN compiles a kernel for every new matrix shape, so the first pass of each width took
    twice as long; now a few widths are compiled once. The padding is masked like any other.
    """
    b, width, d = embeds.shape
    extra = -width % BUCKET
    if width <= 1 or not extra or embeds.device.type != "cpu" or embeds.dtype == torch.float32:
        return embeds, new
    embeds = torch.cat([embeds.new_zeros(b, extra, d), embeds], dim=1)  # (B, Lc', d)
    new = torch.cat([new.new_zeros(b, extra), new], dim=1)  # (B, Lc')
    return embeds, new


@dataclass
class Generated:
    """Greedy output of one row."""

    tokens: list[int]  # generated ids, without the stop token
    stopped: bool  # ended on a stop token (else on the length cap)
    feeds: int  # forward passes in which this row fed a generated token
    fed: bool = True  # whether generation ran at all (its prompt token was fed)


def greedy_generate(
    ctx: BatchedContext,
    first_logits: torch.Tensor,
    *,
    max_new: int,
    stop: set[int],
    banned: list[int] | None = None,
    active: list[bool] | None = None,
    on_token: Callable[[int, int], None] | None = None,
    spans: SpanConstraint | None = None,
) -> list[Generated]:
    """Greedy decoding from ``first_logits (B, V)`` until a stop token or ``max_new`` tokens.

    Args:
        ctx: The context whose last fed positions produced ``first_logits``.
        first_logits: Next-token logits per row.
        max_new: Most tokens per row (stop tokens excluded).
        stop: Token ids that end a row.
        banned: Token ids never generated.
        active: Rows to generate for (default all).
        on_token: Called as ``on_token(row, token_id)`` for every generated token (streaming).
        spans: Restricts each row's tokens to one span of its sources (extractive answers).
    """
    b = first_logits.shape[0]
    out = [Generated([], False, 0) for _ in range(b)]
    done = [not a for a in active] if active is not None else [False] * b
    ban = torch.tensor(banned, device=first_logits.device) if banned else None
    logits = first_logits
    while True:
        if ban is not None:
            logits = logits.clone()
            logits[:, ban] = float("-inf")
        if spans is not None:
            logits = spans.mask(logits, [i for i in range(b) if not done[i]])
        pick = logits.argmax(-1).tolist()
        chunks: list[list[int]] = []
        for i in range(b):
            if done[i]:
                chunks.append([])
                continue
            if pick[i] in stop:
                out[i].stopped, done[i] = True, True
                chunks.append([])
                continue
            out[i].tokens.append(pick[i])
            if spans is not None:
                spans.advance(i, pick[i])
            if on_token is not None:
                on_token(i, pick[i])
            if len(out[i].tokens) >= max_new:
                done[i] = True
                chunks.append([])
            else:
                out[i].feeds += 1
                chunks.append([pick[i]])
        if all(done):
            return out
        logits = ctx.logits(ctx.feed(chunks, keep=1)[:, -1])  # (B, V)


class TextStream:
    """Turns generated token ids into text pieces, per row, for streaming.

    Each piece is what the row's decoded text gained, so the pieces join into exactly the full
    decode. Decoding token by token would not: WordPiece and SentencePiece tokenizers drop the
    space before a word when a token is decoded alone.

    Args:
        tokenizer: Decodes the tokens (special tokens skipped).
        on_text: Called as ``on_text(row, piece)`` whenever a row's text grows.
    """

    def __init__(self, tokenizer: Any, on_text: Callable[[int, str], None]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.tokens: dict[int, list[int]] = {}
        self.sent: dict[int, str] = {}

    def __call__(self, row: int, token: int) -> None:
        self.tokens.setdefault(row, []).append(token)
        self._send(row, final=False)

    def flush(self) -> None:
        """Send what is still held back at the end of generation (e.g. a partial character)."""
        for row in self.tokens:
            self._send(row, final=True)

    def _send(self, row: int, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        prev = self.sent.get(row, "")
        # Wait while the text ends inside a multi-byte character or rewrites what was sent.
        if len(text) > len(prev) and text.startswith(prev) and (final or text[-1] != "\ufffd"):
            self.sent[row] = text
            self.on_text(row, text[len(prev) :])

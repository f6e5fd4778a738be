"""LatentRAG's control tokens: adding them to a tokenizer/LLM, and injection-safe tokenization."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

ANSWER, ANSWER_END = "<answer>", "</answer>"
INFO, INFO_END = "<information>", "</information>"


def think_tokens(m: int) -> list[str]:
    """``<think_1> .. <think_m>``."""
    return [f"<think_{i}>" for i in range(1, m + 1)]


def query_tokens(n: int) -> list[str]:
    """``<query_1> .. <query_n>``."""
    return [f"<query_{i}>" for i in range(1, n + 1)]


def control_tokens(m: int, n: int) -> list[str]:
    """All tokens LatentRAG adds, in a fixed order."""
    return think_tokens(m) + query_tokens(n) + [ANSWER, ANSWER_END, INFO, INFO_END]


@dataclass(frozen=True)
class ControlIds:
    """Token ids of the control tokens in one tokenizer."""

    think: list[int]  # (m,)
    query: list[int]  # (n,)
    answer: int
    answer_end: int
    info: int
    info_end: int
    eos: int | None
    pad: int

    @property
    def all(self) -> set[int]:
        """Every control id (not EOS)."""
        return {*self.think, *self.query, self.answer, self.answer_end, self.info, self.info_end}

    @classmethod
    def from_tokenizer(cls, tok: PreTrainedTokenizerBase, m: int, n: int) -> ControlIds:
        """Look up the ids; raises ValueError if the tokenizer lacks a control token."""

        def one(t: str) -> int:
            i = tok.convert_tokens_to_ids(t)
            if i is None or i == tok.unk_token_id:
                raise ValueError(f"tokenizer has no control token {t!r}; was it made by LatentRAG?")
            return int(i)

        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return cls(
            think=[one(t) for t in think_tokens(m)],
            query=[one(t) for t in query_tokens(n)],
            answer=one(ANSWER),
            answer_end=one(ANSWER_END),
            info=one(INFO),
            info_end=one(INFO_END),
            eos=tok.eos_token_id,
            pad=int(pad if pad is not None else 0),
        )


# Words whose embeddings initialise each new token's row (DESIGN §2: not random noise).
_INIT_WORDS = {
    "think": "think reasoning thought",
    "query": "search query question",
    ANSWER: "answer",
    ANSWER_END: "end answer",
    INFO: "information documents",
    INFO_END: "end information",
}


def add_control_tokens(tok: PreTrainedTokenizerBase, llm: PreTrainedModel, m: int, n: int) -> None:
    """Add the control tokens as special tokens, resize the LLM, and initialise the new rows.

    Each new input (and untied output) embedding row is the mean of the embeddings of a few
    descriptive words plus a small slot-specific offset, so slots start distinct but in-distribution.
    """
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": "</s>"})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    new = [
        t for t in control_tokens(m, n) if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)
    ]
    old_len = _add_special_rows(tok, llm, new)
    _init_rows(tok, llm, m, n, old_len)


def _add_special_rows(tok: PreTrainedTokenizerBase, llm: PreTrainedModel, new: list[str]) -> int:
    """Add ``new`` as special tokens and grow the LLM's embeddings if they are too few.

    Returns:
        The tokenizer's length before: ids from there on are new. (Not the embedding row
        count: many LLMs pad their matrix past the vocabulary, e.g. Qwen2.5's 152,064 rows for
        151,665 tokens, and the new tokens then take unused padding rows.)
    """
    old_len = len(tok)
    tok.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    if len(tok) > llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(len(tok), mean_resizing=False)
    return old_len


@torch.no_grad()
def _mean_rows(
    llm: PreTrainedModel, rows: dict[int, tuple[list[int], torch.Tensor | None]]
) -> None:
    """Set each row ``tid`` of the input (and untied output) embeddings to the mean of rows
    ``ids``, plus ``offset`` (d,) on the input side if given."""
    emb_in = llm.get_input_embeddings().weight  # (V, d)
    out_mod = llm.get_output_embeddings()
    emb_out = out_mod.weight if out_mod is not None else None  # (V, d) or None
    tied = emb_out is not None and emb_out.data_ptr() == emb_in.data_ptr()
    for tid, (ids, offset) in rows.items():
        mean = emb_in[ids].float().mean(0)  # (d,)
        emb_in[tid] = (mean if offset is None else mean + offset).to(emb_in.dtype)
        if emb_out is not None and not tied:
            emb_out[tid] = emb_out[ids].float().mean(0).to(emb_out.dtype)


@torch.no_grad()
def _init_rows(
    tok: PreTrainedTokenizerBase, llm: PreTrainedModel, m: int, n: int, old_len: int
) -> None:
    emb_in = llm.get_input_embeddings().weight  # (V, d)
    std = emb_in[:old_len].float().std().item()
    gen = torch.Generator().manual_seed(0)
    rows: dict[int, tuple[list[int], torch.Tensor | None]] = {}
    for t in control_tokens(m, n):
        tid = tok.convert_tokens_to_ids(t)
        if tid < old_len:
            continue
        key = "think" if t.startswith("<think_") else "query" if t.startswith("<query_") else t
        ids = [
            i for i in tok(_INIT_WORDS[key], add_special_tokens=False)["input_ids"] if i < old_len
        ]
        ids = ids or list(range(min(old_len, 16)))
        rows[tid] = (ids, torch.randn(emb_in.shape[1], generator=gen) * std * 0.1)  # offset (d,)
    _mean_rows(llm, rows)


def add_tag_tokens(
    tok: PreTrainedTokenizerBase, llm: PreTrainedModel, tags: Sequence[str]
) -> list[str]:
    """Make each tag that does not survive encoding and decoding a special token.

    A WordPiece tokenizer decodes ``<search>`` as ``< search >``, which tag parsers cannot read.
    Each new row starts as the mean embedding of the tag's own text pieces.

    Returns:
        The tags added.
    """
    pieces = {t: tok(t, add_special_tokens=False)["input_ids"] for t in tags}
    new = [t for t in tags if tok.decode(pieces[t]).strip() != t]
    if not new:
        return []
    old_len = _add_special_rows(tok, llm, new)
    rows: dict[int, tuple[list[int], torch.Tensor | None]] = {}
    for t in new:
        tid, ids = tok.convert_tokens_to_ids(t), [i for i in pieces[t] if i < old_len]
        if tid >= old_len and ids:
            rows[tid] = (ids, None)
    _mean_rows(llm, rows)
    return new


def encode_untrusted(tok: PreTrainedTokenizerBase, text: str, specials: set[int]) -> list[int]:
    """Tokenize user or document text so that no substring becomes a special/control token.

    Special tokens in ``text`` (e.g. a literal ``<answer>``) are split into ordinary sub-words.
    As a second line of defence, any id in ``specials`` that still appears is dropped.
    """
    ids = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return [i for i in ids if i not in specials]


def special_ids(tok: PreTrainedTokenizerBase) -> set[int]:
    """Ids of every special token the tokenizer knows (control tokens, EOS, BOS, pad, ...)."""
    return {int(i) for i in tok.all_special_ids}


_GENERIC_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def load_tokenizer(
    path: str | os.PathLike[str], trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(path)``, except that a local tokenizer saved as a generic
    fast tokenizer loads as one.

    Transformers 5 replaces the saved pipeline by the model type's own tokenizer class for some
    model types (a ``qwen2`` config gets ``Qwen2Tokenizer``'s pre-tokenizer whatever
    ``tokenizer.json`` says), which would split text differently from the tokenizer the model
    was trained with.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg = Path(path) / "tokenizer_config.json"
    if cfg.is_file() and (Path(path) / "tokenizer.json").is_file():
        cls = json.loads(cfg.read_text(encoding="utf-8")).get("tokenizer_class")
        if cls in _GENERIC_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)

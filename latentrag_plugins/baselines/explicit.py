"""``ExplicitAgent``: a Search-R1-protocol agent over any HF causal LM (the explicit baseline).

It writes ``<think>``/``<search>`` turns token by token, retrieves with the same frozen document
tower and store as LatentRAG, and answers inside ``<answer>``. It shares LatentRAG's machinery
(:class:`~latentrag_plugins.context.BatchedContext`, greedy decoding, KV-cache reuse across turns,
injection-safe tokenization, the context budget and the result type), so latency comparisons
measure the method, not the implementation.

Checkpoint layout (the trainer's explicit SFT mode writes it too)::

    explicit_config.json   ExplicitConfig (kind="explicit"; sorted JSON, library version)
    llm/                   the causal LM (safetensors)
    tokenizer/             its tokenizer
    retriever/             the document tower, only when it can't be loaded by id
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..config import DEFAULT_RETRIEVER, build_config, fit_loaded_budget
from ..encoder import (
    DocumentTowerAPI,
    EncoderTower,
    canonical_retriever_id,
    detect_pooling,
    load_encoder,
)
from ..errors import CheckpointError
from ..io_utils import atomic_path
from ..results import LatentRAGResult, RetrievedDoc
from ..runtime import check_store
from ..speed.precision import WideTwin
from ..tokens import add_tag_tokens, encode_untrusted, load_tokenizer, special_ids
from . import search_r1 as sr1
from .explicit_config import EXPLICIT_CONFIG_FILE, ExplicitConfig, is_explicit_checkpoint
from .explicit_force import ExplicitForce

if TYPE_CHECKING:
    from ..engine import Engine

_ENGINE_LOCK = threading.Lock()

_LLM_DIR, _TOKENIZER_DIR, _RETRIEVER_DIR = "llm", "tokenizer", "retriever"
# Entries an explicit agent checkpoint may hold (a save replaces a directory of only these).
EXPLICIT_ENTRIES = (EXPLICIT_CONFIG_FILE, _LLM_DIR, _TOKENIZER_DIR, _RETRIEVER_DIR)


class ExplicitAgent(WideTwin, DocumentTowerAPI):
    """A Search-R1-style explicit agentic RAG model.

    Build one with :meth:`init` (any causal LM), load one with :meth:`from_pretrained`, answer with
    :meth:`run` / :meth:`run_batch`.

    Attributes:
        config: The agent's :class:`ExplicitConfig`.
        llm: The causal LM.
        tokenizer: Its tokenizer.
        doc_tower: The frozen retriever that embeds text subqueries (and the store's documents).
    """

    def __init__(
        self,
        config: ExplicitConfig,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        doc_tower: EncoderTower,
    ) -> None:
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        self.doc_tower = doc_tower
        self.doc_tower.requires_grad_(False)
        self.doc_tower.eval()
        if tokenizer.eos_token_id is None and tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs an EOS or a pad token")
        self.eos_id: int | None = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.pad_id = int(pad)
        self.specials = special_ids(tokenizer)
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        # Specials the agent may never write: all but EOS and Search-R1's own tags (which some
        # tokenizers hold as special tokens: LatentRAG's <answer>; see add_tag_tokens).
        tags = set(sr1.TAGS)
        tag_ids = {tokenizer.convert_tokens_to_ids(t) for t in tags} - {
            None,
            tokenizer.unk_token_id,
        }
        self._banned = sorted(self.specials - tag_ids - {self.eos_id})
        self._banned_set = set(self._banned)
        self._ban_cache: dict[torch.device, torch.Tensor] = {}
        self._engine: Engine | None = None

    # ------------------------------------------------------------------------------ building
    @classmethod
    def init(
        cls,
        base_model: str | PreTrainedModel,
        retriever: str | EncoderTower | tuple[PreTrainedModel, PreTrainedTokenizerBase] = (
            DEFAULT_RETRIEVER
        ),
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        retriever_id: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **config: Any,
    ) -> ExplicitAgent:
        """Build an agent from any HF causal LM and any HF encoder (no training needed).

        Args:
            base_model: Hub id or path of the causal LM, or a loaded model (then pass
                ``tokenizer``).
            retriever: Hub id or path of the encoder, ``(model, tokenizer)``, or an existing
                :class:`EncoderTower` (e.g. a LatentRAG model's ``doc_tower``, shared).
            tokenizer: Tokenizer for an in-memory ``base_model``.
            retriever_id: Id to record for an in-memory retriever.
            device: Target device (default: CUDA if available).
            dtype: LLM dtype (default: bf16 on GPU, float32 on CPU).
            **config: Any :class:`ExplicitConfig` field (``top_k``, ``max_turns``, ...).
        """
        from ..checkpoint_files import load_base_llm
        from ..devices import default_dtype, resolve_device

        ExplicitConfig(base_model="-", **config)  # typos and bad values fail before any load
        trust = bool(config.get("trust_remote_code", False))
        if isinstance(base_model, str):
            llm, tok = load_base_llm(base_model, trust)
            base_id = base_model
        else:
            if tokenizer is None:
                raise ValueError("pass tokenizer=... with an in-memory base_model")
            llm, tok = base_model, tokenizer
            base_id = getattr(llm.config, "name_or_path", "") or "in-memory"
        if tok.pad_token_id is None and tok.eos_token_id is None:
            tok.add_special_tokens({"eos_token": "</s>"})
            if len(tok) > llm.get_input_embeddings().weight.shape[0]:
                llm.resize_token_embeddings(len(tok), mean_resizing=False)
        add_tag_tokens(tok, llm, sr1.TAGS)
        if isinstance(retriever, EncoderTower):
            tower = retriever
            config.setdefault("retriever_pooling", tower.pooling)
            config.setdefault("retriever_normalize", tower.normalize)
            config.setdefault("retriever_max_length", tower.max_length)
            config.setdefault("query_instruction", tower.query_instruction)
            enc_id = tower.encoder_id
        else:
            if isinstance(retriever, str):
                enc, enc_tok, enc_path = load_encoder(retriever, trust_remote_code=trust)
                enc_id = canonical_retriever_id(retriever)
            else:
                (enc, enc_tok), enc_path = retriever, ""
                enc_id = retriever_id or getattr(enc.config, "name_or_path", "") or "in-memory"
            pooling, instruction = detect_pooling(enc_path or enc_id, enc)
            config.setdefault("retriever_pooling", pooling)
            config.setdefault("query_instruction", instruction)
            tower = None
        cfg = build_config(ExplicitConfig, llm, base_model=base_id, retriever=enc_id, **config)
        if tower is None:
            tower = EncoderTower.from_config(enc, enc_tok, cfg)
        agent = cls(cfg, llm, tok, tower)
        dev = resolve_device(device)
        return agent.to_device(dev, dtype or default_dtype(dev))

    def to_device(
        self,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
        wide_dtype: torch.dtype | None = None,
    ) -> ExplicitAgent:
        """Move to ``device``; the LLM and tower take ``dtype`` (tower: float32 for float16 on
        CPU). With ``wide_dtype``, passes over many tokens run on a copy of the LLM in that
        dtype, and the tower takes it (:mod:`latentrag_plugins.speed.precision`)."""
        from ..devices import default_dtype, tower_dtype

        device = torch.device(device)
        dtype = dtype or default_dtype(device)
        self.llm.to(device=device, dtype=dtype)
        self.doc_tower.to(device=device, dtype=tower_dtype(device, wide_dtype or dtype))
        self.llm.eval()
        self._set_wide_twin(dtype, wide_dtype)
        return self

    @property
    def device(self) -> torch.device:
        """Device of the LLM."""
        return next(self.llm.parameters()).device

    # ------------------------------------------------------------------------------ tokens
    @lru_cache(maxsize=64)  # noqa: B019 - an agent lives as long as its tokenizer
    def trusted(self, text: str) -> tuple[int, ...]:
        """Token ids of template text (never user input)."""
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def untrusted(self, text: str) -> list[int]:
        """Token ids of user/document text; special-token strings in it stay plain text, and
        protocol tags in it are made inert (:func:`search_r1.defang`)."""
        return encode_untrusted(self.tokenizer, sr1.defang(text), self.specials)

    def prompt_ids(self, question: str) -> list[int]:
        """Search-R1's prompt: instruction, ``Question: {question}`` and a newline."""
        return [
            *self.bos,
            *self.trusted(sr1.SEARCH_R1_INSTRUCTION + " Question:"),
            *self.untrusted(" " + question.strip()),
            *self.trusted("\n"),
        ]

    def information_ids(self, docs: Sequence[RetrievedDoc], budget: int) -> list[int]:
        """``\\n\\n<information>Doc 1(Title: t) text\\n...</information>\\n\\n`` within ``budget``.

        Each document keeps at most ``max_doc_tokens`` tokens; when the budget is tighter every
        document gets an equal share. Returns ``[]`` when not even a few tokens per document fit.
        """
        head = list(self.trusted(f"\n\n{sr1.INFORMATION}"))
        tail = list(self.trusted(f"{sr1.INFORMATION_END}\n\n"))
        sep = list(self.trusted("\n"))
        parts = []
        for i, d in enumerate(docs, start=1):
            parts.append(
                (list(self.trusted(f"Doc {i}(Title:")), self.untrusted(f" {d.title}) {d.body}"))
            )
        fixed = len(head) + len(tail) + sum(len(h) + len(sep) for h, _ in parts)
        if not parts or budget <= fixed:
            return []
        share = min(self.config.max_doc_tokens, (budget - fixed) // len(parts))
        if share < 4:
            return []
        out = head
        for j, (h, body) in enumerate(parts):
            out += h + body[:share] + (sep if j < len(parts) - 1 else [])
        return out + tail

    def answer_open_ids(self) -> list[int]:
        """What is fed to force the answer: ``\\n<answer>``."""
        return list(self.trusted(f"\n{sr1.ANSWER}"))

    def banned_tensor(self, device: torch.device) -> torch.Tensor:
        """Ids the agent may not generate, as a tensor on ``device``."""
        if device not in self._ban_cache:
            self._ban_cache[device] = torch.tensor(self._banned, dtype=torch.long, device=device)
        return self._ban_cache[device]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids, tags kept (special tokens other than tags dropped)."""
        return self.tokenizer.decode(
            [i for i in ids if i not in self._banned_set and i != self.eos_id],
            skip_special_tokens=False,
        )

    def decode_raw(self, ids: Sequence[int]) -> str:
        """Text of ids with every token kept (for stop-string checks)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # ------------------------------------------------------------------------------ inference
    def run(
        self,
        question: str,
        store: Any,
        *,
        max_turns: int | None = None,
        top_k: int | None = None,
        force: ExplicitForce | None = None,
    ) -> LatentRAGResult:
        """Answer one question over ``store`` (anything with ``search(embedding, k)``).

        Args:
            question: The question; empty or whitespace-only raises ValueError.
            store: A vector store built with this agent's document tower.
            max_turns: Most searches (default ``config.max_turns``); then the answer is forced.
            top_k: Documents per search (default ``config.top_k``).
            force: Benchmark mode: force the number of searches and every generation length.

        Returns:
            The answer, the steps (thought and subquery texts, documents), stage timings
            (thought and subquery generation under ``reasoning``; subquery embedding and search
            under ``retrieval``) and counts.
        """
        return self.run_batch(
            [question], store, max_turns=max_turns, top_k=top_k,
            force=None if force is None else [force],
        )[0]  # fmt: skip

    def run_batch(
        self,
        questions: Sequence[str],
        store: Any,
        *,
        max_turns: int | None = None,
        top_k: int | None = None,
        force: Sequence[ExplicitForce] | None = None,
    ) -> list[LatentRAGResult]:
        """Answer several questions, sharing forward passes; arguments as in :meth:`run`
        (``force``: one plan per question). The questions go to :attr:`engine` together, so
        they share passes with each other and with any other caller's; each result's timings
        and counts are its own."""
        from ..engine import StoreSearch

        check_store(store, self.encoder_id, self.dim)
        handles = self.engine.submit_many(
            list(questions), StoreSearch(store), max_turns=max_turns, top_k=top_k, force=force
        )
        try:
            return [h.result() for h in handles]
        finally:
            for h in handles:
                h.cancel()  # those still running, when one failed

    @property
    def engine(self) -> Engine:
        """The :class:`~latentrag_plugins.engine.Engine` that runs this agent's requests, with
        token-level continuous batching (created on first use)."""
        with _ENGINE_LOCK:
            if self._engine is None:
                from ..engine import Engine
                from .explicit_engine import ExplicitScheduler

                self._engine = Engine(self, scheduler=ExplicitScheduler(self))
            return self._engine

    def __getstate__(self) -> dict[str, Any]:
        """The agent's state without its engine (a copy makes its own)."""
        state = self.__dict__.copy()
        state["_engine"] = None
        return state

    # ------------------------------------------------------------------------------ save / load
    def save_pretrained(
        self, path: str | os.PathLike[str], *, include_retriever: bool = False
    ) -> None:
        """Save the agent to directory ``path`` (safetensors only), atomically.

        Layout: ``explicit_config.json``, ``llm/``, ``tokenizer/`` and, with
        ``include_retriever`` or an in-memory retriever, ``retriever/``.
        """
        from ..checkpoint_files import retriever_loadable

        with atomic_path(path, owned=EXPLICIT_ENTRIES) as tmp:
            tmp.mkdir()
            self.tokenizer.save_pretrained(tmp / _TOKENIZER_DIR)
            self.llm.save_pretrained(tmp / _LLM_DIR, safe_serialization=True)
            if include_retriever or not retriever_loadable(self.config.retriever):
                self.doc_tower.encoder.save_pretrained(
                    tmp / _RETRIEVER_DIR, safe_serialization=True
                )
                self.doc_tower.tokenizer.save_pretrained(tmp / _RETRIEVER_DIR)
            self.config.save(tmp / EXPLICIT_CONFIG_FILE)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        wide_dtype: torch.dtype | None = None,
        trust_remote_code: bool | None = None,
    ) -> ExplicitAgent:
        """Load an agent saved by :meth:`save_pretrained` (``wide_dtype``: see
        :meth:`to_device`).

        Raises:
            CheckpointError: A file is missing or corrupt; the message names it.
        """
        from .. import threads
        from ..demo.assets import resolve_checkpoint
        from ..devices import resolve_device

        root = resolve_checkpoint(path)
        if not root.is_dir():
            raise CheckpointError(f"{root}: checkpoint directory not found")
        dev = resolve_device(device)
        return threads.apart(
            lambda: cls._load(root, dev, dtype, wide_dtype, trust_remote_code), dev
        )

    @classmethod
    def _load(
        cls,
        root: Path,
        dev: torch.device,
        dtype: torch.dtype | None,
        wide_dtype: torch.dtype | None,
        trust_remote_code: bool | None,
    ) -> ExplicitAgent:
        """The agent saved at ``root``, on ``dev`` (:meth:`from_pretrained`)."""
        from ..checkpoint_files import load_checked, trust_remote
        from ..devices import loaded_dtypes

        cfg = ExplicitConfig.load(root / EXPLICIT_CONFIG_FILE)
        trust = trust_remote(root, cfg.trust_remote_code, trust_remote_code)
        tok = load_checked(
            root / _TOKENIZER_DIR,
            "tokenizer",
            lambda p: load_tokenizer(p, trust),
        )
        llm = load_checked(
            root / _LLM_DIR,
            "LLM",
            lambda p: AutoModelForCausalLM.from_pretrained(
                p, trust_remote_code=trust, use_safetensors=True
            ),
        )
        ret_dir = root / _RETRIEVER_DIR
        source = str(ret_dir) if ret_dir.is_dir() else cfg.retriever
        enc, enc_tok, _ = load_encoder(source, trust_remote_code=trust)
        config_file = root / EXPLICIT_CONFIG_FILE
        try:
            fit_loaded_budget(cfg, llm, str(config_file))
            agent = cls(cfg, llm, tok, EncoderTower.from_config(enc, enc_tok, cfg))
        except ValueError as exc:
            raise CheckpointError(f"{config_file} does not fit the checkpoint: {exc}") from None
        return agent.to_device(dev, *loaded_dtypes(dev, dtype, wide_dtype))


__all__ = ["ExplicitAgent", "ExplicitConfig", "ExplicitForce", "is_explicit_checkpoint"]

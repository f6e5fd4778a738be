"""Reading checkpoint files: clear errors for missing or corrupt ones, the remote-code rule, and
the retriever towers a checkpoint (or a retriever id) provides without loading any LLM."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from .config import LatentRAGConfig
from .devices import resolve_device, tower_auto_dtype
from .encoder import (
    EncoderTower,
    canonical_retriever_id,
    detect_pooling,
    load_encoder,
    resolve_retriever,
)
from .errors import CheckpointError
from .hub import check_hub_source, quiet_loading
from .io_utils import check_local_source
from .tokens import load_tokenizer

log = logging.getLogger(__name__)

RETRIEVER_DIR = "retriever"  # a checkpoint's bundled retriever (encoder and tokenizer)


def load_checked(path: Path, what: str, loader: Any) -> Any:
    """Run ``loader(path)``; a missing or unreadable file raises CheckpointError naming it."""
    if not path.exists():
        raise CheckpointError(f"{path}: missing {what} file(s)")
    try:
        with quiet_loading():
            return loader(str(path))
    except CheckpointError:
        raise
    except Exception as exc:  # transformers/safetensors raise many types on corrupt files
        raise CheckpointError(f"{path}: could not load {what}: {exc}") from None


def trust_remote(root: Path, recorded: bool, asked: bool | None) -> bool:
    """Whether to run custom model code: only when the caller asks (DESIGN §5); a checkpoint
    made with it only gets a warning saying how to ask."""
    if recorded and not asked:
        log.warning(
            "%s was made with trust_remote_code=True; its custom model code is not run unless "
            "you pass trust_remote_code=True (CLI: --trust-remote-code) for a source you trust",
            root,
        )
    return bool(asked)


def retriever_loadable(retriever_id: str) -> bool:
    """Whether a retriever id loads again without the checkpoint, from any working directory:
    the default MiniLM, an absolute local path or a hub id (a relative path is bundled)."""
    if Path(retriever_id).is_dir():
        return Path(retriever_id).is_absolute()
    return Path(resolve_retriever(retriever_id)).is_dir() or "/" in retriever_id


def load_document_tower(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    trust_remote_code: bool | None = None,
) -> EncoderTower:
    """Load only the frozen document tower of a checkpoint, LatentRAG or explicit agent (for
    indexing, without the LLM), in the dtype it takes beside its model by default;
    ``trust_remote_code`` as in :meth:`LatentRAG.from_pretrained`."""
    from .baselines.explicit_config import EXPLICIT_CONFIG_FILE, ExplicitConfig
    from .baselines.explicit_config import is_explicit_checkpoint as explicit
    from .demo.assets import resolve_checkpoint

    root = resolve_checkpoint(path)
    if explicit(root):
        cfg: LatentRAGConfig | ExplicitConfig = ExplicitConfig.load(root / EXPLICIT_CONFIG_FILE)
    else:
        cfg = LatentRAGConfig.load(root / "config.json")
    ret_dir = root / RETRIEVER_DIR
    source = str(ret_dir) if ret_dir.is_dir() else cfg.retriever
    trust = trust_remote(root, cfg.trust_remote_code, trust_remote_code)
    enc, tok, _ = load_encoder(source, trust_remote_code=trust)
    tower = EncoderTower.from_config(enc, tok, cfg)
    dev = resolve_device(device)
    return tower.to(device=dev, dtype=tower_auto_dtype(dev)).eval()


def retriever_tower(
    name: str, *, device: str | torch.device | None = None, trust_remote_code: bool = False
) -> EncoderTower:
    """Load a retriever by id or path as a document tower, with pooling detected from it, in
    the dtype a model's towers take by default."""
    enc, tok, path = load_encoder(name, trust_remote_code=trust_remote_code)
    pooling, instruction = detect_pooling(path, enc)
    tower = EncoderTower(
        enc,
        tok,
        pooling=pooling,
        query_instruction=instruction,
        encoder_id=canonical_retriever_id(name),
    )
    dev = resolve_device(device)
    return tower.to(device=dev, dtype=tower_auto_dtype(dev)).eval()


def load_base_llm(base_model: str, trust: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A base LLM and its tokenizer, by hub id or local path (a model's ``init``)."""
    check_local_source(base_model, "base model")
    check_hub_source(base_model, "base model")
    with quiet_loading():
        tok = load_tokenizer(base_model, trust)
        llm = AutoModelForCausalLM.from_pretrained(
            base_model, trust_remote_code=trust, use_safetensors=True
        )
    return llm, tok

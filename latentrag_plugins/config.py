"""``LatentRAGConfig``: every setting of a LatentRAG model, validated and saved as sorted JSON."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import Self

from ._version import __version__
from .errors import CheckpointError
from .io_utils import write_json_atomic

DEFAULT_RETRIEVER = "sentence-transformers/all-MiniLM-L6-v2"

Pooling = Literal["mean", "cls", "last_token"]
ConfigT = TypeVar("ConfigT", bound=BaseModel)


class VersionedConfig(BaseModel):
    """A validated config saved as sorted JSON with the library version.

    Unknown keys in a loaded file warn and are ignored (so newer files still load); in code they
    are errors (a typo such as ``topk=7`` must not pass silently). A missing, corrupt or invalid
    file raises ``load_error`` naming the file.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    load_error: ClassVar[type[Exception]] = CheckpointError  # raised by load()
    config_name: ClassVar[str] = "config"  # words for error messages

    library_version: str = Field(default=__version__, description="Version that wrote this.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a dict; unknown keys warn and are dropped."""
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            warnings.warn(f"{cls.__name__}: ignoring unknown keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the config as sorted JSON with the current library version (atomically)."""
        data = self.model_dump()
        data["library_version"] = __version__
        write_json_atomic(path, data)

    @classmethod
    def check_raw(cls, data: dict[str, Any]) -> None:
        """Hook: reject a raw loaded dict before validation (raise ValueError)."""

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read a config JSON file written by :meth:`save`.

        Raises:
            ``cls.load_error``: The file is missing, not JSON, or invalid; the message names it.
        """
        p = Path(path)
        if not p.is_file():
            raise cls.load_error(f"{p}: missing {cls.config_name} file")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise cls.load_error(f"{p}: corrupt {cls.config_name} file ({exc})") from None
        if not isinstance(data, dict):
            raise cls.load_error(f"{p}: corrupt {cls.config_name} file (not a JSON object)")
        try:
            cls.check_raw(data)
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise cls.load_error(f"{p}: invalid {cls.config_name}: {exc}") from None


class LatentRAGConfig(VersionedConfig):
    """Configuration of a LatentRAG model (paper defaults, DESIGN §2).

    Unknown keys in a loaded config warn and are ignored, so newer checkpoints still load.
    """

    # --- base models -------------------------------------------------------------------------
    base_model: str = Field(description="Hub id or local path of the base causal LM.")
    retriever: str = Field(
        default=DEFAULT_RETRIEVER,
        description="Canonical id of the dense retriever (hub id or local path); stores record it.",
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow custom model code from the hub. Off unless asked for."
    )

    # --- latent slots ------------------------------------------------------------------------
    n_think: int = Field(default=4, ge=1, le=64, description="Thought slots per step (m).")
    n_query: int = Field(default=16, ge=1, le=128, description="Subquery slots per step (n).")

    # --- inference ---------------------------------------------------------------------------
    top_k: int = Field(default=3, ge=1, le=100, description="Documents retrieved per step.")
    max_steps: int = Field(
        default=4, ge=0, le=32, description="Most retrieval steps; then the answer is forced."
    )
    max_context_tokens: int = Field(
        default=3000,
        ge=64,
        description="Token budget of the whole LLM context of one question (at most the LLM's "
        "positions; init lowers the default to them).",
    )
    max_doc_tokens: int = Field(
        default=256, ge=8, description="Most LLM tokens kept per retrieved document."
    )
    max_answer_tokens: int = Field(
        default=32, ge=1, description="Most tokens generated for the final answer."
    )
    max_decode_tokens: int = Field(
        default=64, ge=1, description="Most tokens generated when decoding a latent thought/query."
    )
    extractive_answers: bool = Field(
        default=False,
        description="Answers quote one span of the question or the retrieved documents "
        "(constrained greedy decoding); also used by naive RAG on this model.",
    )

    # --- retriever towers --------------------------------------------------------------------
    retriever_pooling: Pooling = Field(
        default="mean", description="Pooling of the encoder's last hidden states."
    )
    retriever_normalize: bool = Field(default=True, description="L2-normalise embeddings.")
    retriever_max_length: int = Field(
        default=256, ge=8, description="Most encoder tokens per document or text query."
    )
    query_instruction: str | None = Field(
        default=None,
        description="Prefix for natural-language queries (e.g. Qwen3-Embedding's instruction).",
    )
    retriever_dim: int | None = Field(
        default=None, ge=1, description="Embedding dimension (filled in by LatentRAG.init)."
    )
    pretrained_query_tower: bool = Field(
        default=True,
        description="Query tower starts from the pretrained retriever (False: Proj_ret output "
        "is pooled directly, the paper's 'no pretrained retriever' ablation).",
    )

    # --- projectors --------------------------------------------------------------------------
    projector_heads: int | None = Field(
        default=None, ge=1, description="Attention heads in each projector (None: d_llm // 64)."
    )
    projector_ffn_mult: int = Field(default=4, ge=1, description="FFN width / input width.")
    projector_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Projector dropout.")

    # --- adapter -----------------------------------------------------------------------------
    lora: dict[str, Any] | None = Field(
        default=None, description="LoRA settings when the LLM is saved as an adapter, else None."
    )

    @field_validator("base_model", "retriever")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("must be a non-empty model id or path")
        return v

    @model_validator(mode="after")
    def _budget(self) -> LatentRAGConfig:
        need = self.n_think + self.n_query + self.max_answer_tokens + 32
        if self.max_context_tokens < need:
            raise ValueError(
                f"max_context_tokens={self.max_context_tokens} is too small for the slots and "
                f"answer (needs at least {need})"
            )
        return self


def position_limit(llm: Any) -> int | None:
    """Most positions the LLM's config allows (``max_position_embeddings`` or ``n_positions``),
    or None when it names none."""
    cfg = getattr(llm, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def build_config(config_cls: type[ConfigT], llm: Any, **fields: Any) -> ConfigT:
    """A new model's validated config, its context budget fitted to the LLM's positions.

    An unset ``max_context_tokens`` is lowered to the LLM's position limit when that is smaller
    than the default; a budget set over the limit is refused.

    Raises:
        ValueError: Invalid settings, or a budget over the LLM's positions.
    """
    limit = position_limit(llm)
    default = config_cls.model_fields["max_context_tokens"].default
    lowered = "max_context_tokens" not in fields and limit is not None and limit < default
    if lowered:
        fields["max_context_tokens"] = limit
    try:
        cfg = config_cls(**fields)
    except ValueError as exc:
        if lowered:
            raise ValueError(
                f"the LLM has only {limit} positions, too few for these settings: {exc}"
            ) from None
        raise
    if limit is not None and cfg.max_context_tokens > limit:  # DESIGN §5: never overflow it
        raise ValueError(
            f"max_context_tokens={cfg.max_context_tokens} exceeds the LLM's {limit} positions; "
            f"set max_context_tokens <= {limit}"
        )
    return cfg


def fit_loaded_budget(cfg: Any, llm: Any, where: str) -> None:
    """A loaded config whose budget exceeds the LLM's positions (saved before budgets were
    checked) gets the limit instead, with a warning naming ``where``."""
    limit = position_limit(llm)
    if limit is not None and cfg.max_context_tokens > limit:
        warnings.warn(
            f"{where}: max_context_tokens={cfg.max_context_tokens} exceeds the LLM's {limit} "
            f"positions; using {limit}",
            stacklevel=3,
        )
        cfg.max_context_tokens = limit

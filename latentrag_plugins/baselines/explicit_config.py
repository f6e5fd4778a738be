"""``ExplicitConfig``: the settings of an explicit (Search-R1-protocol) agent checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..config import DEFAULT_RETRIEVER, Pooling, VersionedConfig
from ..errors import CheckpointError

EXPLICIT_CONFIG_FILE = "explicit_config.json"


def is_explicit_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds an explicit agent checkpoint (``explicit_config.json``)."""
    return (Path(path) / EXPLICIT_CONFIG_FILE).is_file()


def refuse_explicit(root: Path) -> None:
    """Raise a :class:`CheckpointError` that says so when ``root`` holds an explicit agent
    where a LatentRAG model is needed."""
    if is_explicit_checkpoint(root) and not (root / "config.json").is_file():
        raise CheckpointError(
            f"{root} holds an explicit agent ({EXPLICIT_CONFIG_FILE}), not a LatentRAG model: "
            "load it with ExplicitAgent.from_pretrained (CLI: `latentrag ask` and `latentrag "
            "index` take it as --model, `latentrag eval` as --baselines explicit:DIR)"
        )


class ExplicitConfig(VersionedConfig):
    """Configuration of an :class:`~latentrag_plugins.baselines.explicit.ExplicitAgent`.

    Generation settings mirror :class:`~latentrag_plugins.config.LatentRAGConfig` so that the
    comparison with LatentRAG is fair (same top-k, same turn limit, same context budget, greedy
    decoding). Unknown keys in a loaded config warn and are ignored.
    """

    config_name: ClassVar[str] = "explicit agent config"

    kind: Literal["explicit"] = Field(default="explicit", description="Checkpoint kind marker.")

    # --- base models -------------------------------------------------------------------------
    base_model: str = Field(description="Hub id or local path of the base causal LM.")
    retriever: str = Field(
        default=DEFAULT_RETRIEVER,
        description="Canonical id of the dense retriever that embeds text subqueries and docs.",
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow custom model code from the hub. Off unless asked for."
    )

    # --- protocol ----------------------------------------------------------------------------
    top_k: int = Field(default=3, ge=1, le=100, description="Documents retrieved per search.")
    max_turns: int = Field(
        default=4, ge=0, le=32, description="Most searches; then the answer is forced."
    )
    max_turn_tokens: int = Field(
        default=256, ge=1, description="Most tokens generated per turn (thought + search call)."
    )
    max_answer_tokens: int = Field(
        default=32, ge=1, description="Most tokens generated for a forced final answer."
    )
    max_context_tokens: int = Field(
        default=3000, ge=64, description="Token budget of the whole LLM context of one question."
    )
    extractive_answers: bool = Field(
        default=False,
        description="Answers quote one span of the prompt or the retrieved documents "
        "(constrained greedy decoding inside <answer>).",
    )
    max_doc_tokens: int = Field(
        default=256, ge=8, description="Most LLM tokens kept per retrieved document."
    )

    # --- retriever (document tower) ----------------------------------------------------------
    retriever_pooling: Pooling = Field(
        default="mean", description="Pooling of the encoder's last hidden states."
    )
    retriever_normalize: bool = Field(default=True, description="L2-normalise embeddings.")
    retriever_max_length: int = Field(
        default=256, ge=8, description="Most encoder tokens per document or text query."
    )
    query_instruction: str | None = Field(
        default=None, description="Prefix for text subqueries (e.g. Qwen3-Embedding's)."
    )

    # --- bookkeeping -------------------------------------------------------------------------

    @field_validator("base_model", "retriever")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("must be a non-empty model id or path")
        return v

    @model_validator(mode="after")
    def _budget(self) -> ExplicitConfig:
        need = self.max_turn_tokens + self.max_answer_tokens + 32
        if self.max_context_tokens < need:
            raise ValueError(
                f"max_context_tokens={self.max_context_tokens} is too small for one turn and the "
                f"answer (needs at least {need})"
            )
        return self

    @classmethod
    def check_raw(cls, data: dict[str, Any]) -> None:
        """Refuse other kinds of config (e.g. a LatentRAG config)."""
        if data.get("kind", "explicit") != "explicit":
            raise ValueError(f"not an explicit agent config (kind={data.get('kind')!r})")

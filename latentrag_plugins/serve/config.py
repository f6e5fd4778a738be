"""``ServeConfig``: what a LatentRAG service serves (model, store) and how (replicas, batching)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from ..config import VersionedConfig
from ..engine import EngineConfig

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # module.path:function
_ENGINE = EngineConfig.model_fields


class ServeConfig(VersionedConfig):
    """Settings of a LatentRAG service on Ray Serve (``latentrag serve``, :func:`build_app`).

    Give the store either as ``index`` (a FAISS index directory written by ``latentrag index``)
    or as ``store_factory`` (a function that returns the store; see :func:`load_store`).

    Attributes:
        model: LatentRAG checkpoint directory (``demo``: the shipped demo model).
        index: FAISS index directory, built with the model's document tower.
        store_factory: ``module:function`` returning a store: a FAISS store, a LangChain
            ``VectorStore`` or a LlamaIndex ``VectorStoreIndex`` (Qdrant, Milvus, ...). It is
            called once per replica, with the loaded model if it takes an argument.
        replicas: Replicas of the model (each one engine, on its own process, CPU or GPU).
        max_batch: Most requests in flight at once per replica; their rows share forward
            passes. Same default as the engine's.
        max_queue: Most requests waiting per replica beyond ``max_batch``.
        max_ongoing_requests: Requests Ray Serve sends to one replica at once (None:
            ``max_batch`` plus 8, so health checks and newcomers never wait behind a full
            batch); others wait in Ray Serve's queue for the first replica with room.
        num_cpus: CPUs Ray reserves per replica.
        num_gpus: GPUs Ray reserves per replica (1 for a GPU per replica; 0.5 puts two on one).
        device: Where each replica runs the model (None: CUDA when it has a GPU, else CPU).
        dtype: Weights' dtype: ``auto``, ``float32``, ``bfloat16``, ``float16`` or ``mixed``
            (as ``latentrag ask --dtype``).
        trust_remote_code: Run custom model code that the checkpoint's models need.
    """

    config_name = "serve config"

    model: str = Field(min_length=1, description="LatentRAG checkpoint directory, or `demo`.")
    index: str | None = Field(default=None, description="FAISS index directory.")
    store_factory: str | None = Field(
        default=None, description="`module:function` returning the store to search."
    )
    replicas: int = Field(default=1, ge=1, description="Replicas of the model.")
    max_batch: int = Field(
        default=_ENGINE["max_batch"].default, ge=1, description="Requests in flight per replica."
    )
    max_queue: int = Field(
        default=_ENGINE["max_queue"].default, ge=0, description="Requests waiting per replica."
    )
    max_ongoing_requests: int | None = Field(
        default=None, ge=1, description="Requests Ray Serve sends to a replica at once."
    )
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs reserved per replica.")
    device: str | None = Field(default=None, description="Model device (None: auto).")
    dtype: str = Field(default="auto", description="Weights' dtype (auto, float32, ...).")
    trust_remote_code: bool = Field(default=False, description="Run checkpoint model code.")

    @field_validator("store_factory")
    @classmethod
    def _factory_form(cls, value: str | None) -> str | None:
        if value is not None and not _FACTORY.match(value):
            raise ValueError("expected module:function, e.g. my_app.stores:make_store")
        return value

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        from ..cli.common import DTYPES

        if value not in DTYPES:
            raise ValueError(f"expected one of {', '.join(DTYPES)}")
        return value

    @model_validator(mode="after")
    def _one_store(self) -> ServeConfig:
        if (self.index is None) == (self.store_factory is None):
            raise ValueError("give the store as either index or store_factory (exactly one)")
        return self

    @property
    def ongoing_requests(self) -> int:
        """Requests Ray Serve sends to one replica at once."""
        return self.max_ongoing_requests or self.max_batch + 8

    def store_source(self) -> str:
        """Where the store comes from, for messages: the index directory or the factory."""
        return self.index if self.index is not None else f"{self.store_factory}()"

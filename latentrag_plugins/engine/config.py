"""``EngineConfig``: how many requests an engine serves at once, and how it waits for stores."""

from __future__ import annotations

from pydantic import Field

from ..config import VersionedConfig


class EngineConfig(VersionedConfig):
    """Settings of an :class:`~latentrag_plugins.engine.Engine`.

    Attributes:
        max_batch: Most requests in flight at once (their rows share forward passes); more
            wait in the queue.
        max_queue: Most requests waiting beyond ``max_batch``; one more is refused at once
            with :class:`~latentrag_plugins.engine.EngineBusy`.
        search_workers: Threads that run sync store searches (async ones run on the caller's
            event loop).
        search_linger_ms: Before a step pass, how long to wait for searches sent in the last
            round that are still running, so that their requests join the pass. A slower
            search is not waited for.
        idle_exit_s: The engine's thread ends after this long without work (a new request
            starts it again).
        threads: CPU threads (torch's, and FAISS's when loaded) of the engine's thread, which
            runs every pass, and of each search worker (None: the library's default, one on
            machines with at most 2 CPUs; ``LATENTRAG_THREADS`` overrides it).
    """

    config_name = "engine config"

    max_batch: int = Field(default=32, ge=1, description="Most requests in flight at once.")
    max_queue: int = Field(default=1024, ge=0, description="Most requests waiting beyond them.")
    search_workers: int = Field(default=16, ge=1, description="Threads for sync searches.")
    search_linger_ms: float = Field(
        default=2.0, ge=0, description="Wait for the last round's searches before a step pass."
    )
    idle_exit_s: float = Field(
        default=10.0, gt=0, description="Seconds without work before the thread ends."
    )
    threads: int | None = Field(
        default=None, ge=1, description="Torch CPU threads of the passes (None: the default)."
    )

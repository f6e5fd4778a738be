"""``latentrag bench``: the latency benchmark (random-weight models, synthetic corpus, forced
generation lengths from the paper's Table 8). See :mod:`latentrag_plugins.bench.runner`."""

from __future__ import annotations

from .runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]

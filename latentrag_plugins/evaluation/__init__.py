"""Evaluation: metrics aggregation, the eval runner, markdown tables and the stage chart.

Nothing here imports matplotlib until a chart is asked for (``plot.plot_stages``).
"""

from __future__ import annotations

from .questions import Question, read_questions
from .runner import Record, evaluate, report
from .stats import STAGES, latency_summary, percentile

__all__ = [
    "STAGES",
    "Question",
    "Record",
    "evaluate",
    "latency_summary",
    "percentile",
    "read_questions",
    "report",
]

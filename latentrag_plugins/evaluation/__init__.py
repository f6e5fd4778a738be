"""Evaluation: metrics aggregation, the eval runner, the retrieval-only eval, markdown tables and
the stage chart.

Nothing here imports matplotlib until a chart is asked for (``plot.plot_stages``).
"""

from __future__ import annotations

from .questions import Question, read_questions
from .retrieval import RETRIEVAL_METHODS, evaluate_retrieval, retrieval_report
from .runner import Record, evaluate, report
from .stats import STAGES, latency_summary, percentile

__all__ = [
    "RETRIEVAL_METHODS",
    "STAGES",
    "Question",
    "Record",
    "evaluate",
    "evaluate_retrieval",
    "latency_summary",
    "percentile",
    "read_questions",
    "report",
    "retrieval_report",
]

"""The stage-breakdown chart (like the paper's Figure 1): one stacked bar per method.

matplotlib is optional (the ``[plot]`` extra) and imported only here, when a chart is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..io_utils import atomic_path
from .stats import OTHER, STAGES

_COLORS = {
    "prefill": "#4c72b0",
    "reasoning": "#dd8452",
    "retrieval": "#55a868",
    "answer": "#c44e52",
    "decode": "#8172b3",
    OTHER: "#bbbbbb",
}


def plot_stages(
    methods: Mapping[str, Mapping[str, Any]],
    out: str | os.PathLike[str],
    *,
    title: str = "Latency per question by stage",
    score_key: str | None = None,
) -> None:
    """Write a PNG with one horizontal stacked bar of mean stage times per method.

    Args:
        methods: ``{method: {"stages_ms": {stage: ms}, ...}}`` (the eval/bench ``methods``).
        out: PNG path (written atomically).
        title: Chart title.
        score_key: A metric to print after each bar (e.g. ``"em"``), when present.

    Raises:
        ImportError: matplotlib is missing; the message names the ``[plot]`` extra.
    """
    from ..extras import require

    mpl = require("matplotlib", "plot", "the latency chart (--plot)")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    names = list(methods)
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.6 * len(names)))
    left = [0.0] * len(names)
    for stage in (*STAGES, OTHER):
        vals = [float(methods[n].get("stages_ms", {}).get(stage, 0.0)) for n in names]
        if not any(vals):
            continue
        ax.barh(names, vals, left=left, color=_COLORS[stage], label=stage)
        left = [a + b for a, b in zip(left, vals)]
    for y, n in enumerate(names):
        total = methods[n].get("mean_ms")
        label = f" {total if isinstance(total, (int, float)) else left[y]:.0f} ms"
        score = methods[n].get(score_key) if score_key else None
        if isinstance(score, (int, float)):
            label += f"  {score_key.upper()} {100 * score:.1f}"
        ax.text(left[y], y, label, va="center", fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("mean latency per question (ms)")
    ax.set_title(title)
    ax.set_xlim(0, max(left + [1.0]) * 1.35)
    ax.legend(loc="lower right", fontsize=8, ncol=len(_COLORS))
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)

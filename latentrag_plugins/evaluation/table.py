"""Markdown tables of eval and bench reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .stats import OTHER, STAGES


def _f(x: Any, pct: bool = False, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, (int, float)):
        return f"{100 * x:.{digits}f}" if pct else f"{x:.{digits}f}"
    return str(x)


def latency_table(methods: Mapping[str, Mapping[str, Any]]) -> str:
    """Latency, stage breakdown and counts per method, as a markdown table."""
    stages = [
        *STAGES,
        *([OTHER] if any(OTHER in m.get("stages_ms", {}) for m in methods.values()) else []),
    ]
    head = ["method", "mean ms", "p50 ms", "p95 ms", *stages, "passes", "out tok"]
    rows = []
    for name, m in methods.items():
        st = m.get("stages_ms", {})
        rows.append(
            [
                name,
                _f(m.get("mean_ms")),
                _f(m.get("p50_ms")),
                _f(m.get("p95_ms")),
                *(_f(st.get(s)) for s in stages),
                _f(m.get("forward_passes")),
                _f(m.get("output_tokens")),
            ]
        )
    return _md(head, rows)


def quality_table(methods: Mapping[str, Mapping[str, Any]]) -> str:
    """EM, F1, retrieval success/overlap and steps per method, as a markdown table."""
    support = any(m.get("support_recall") is not None for m in methods.values())
    head = ["method", "n", "EM", "F1", "ret. success", *(["support recall"] if support else []),
            "overlap w/ explicit", "mean steps"]  # fmt: skip
    rows = [
        [
            name,
            str(m.get("n", "-")),
            _f(m.get("em"), pct=True),
            _f(m.get("f1"), pct=True),
            _f(m.get("retrieval_success"), pct=True),
            *([_f(m.get("support_recall"), pct=True)] if support else []),
            _f(m.get("retrieval_overlap"), pct=True),
            _f(m.get("mean_steps"), digits=2),
        ]
        for name, m in methods.items()
    ]
    return _md(head, rows)


def throughput_table(methods: Mapping[str, Mapping[str, Any]]) -> str:
    """Questions per second at each batch size, as a markdown table."""
    sizes = sorted({b for m in methods.values() for b in m.get("throughput_qps", {})}, key=int)
    head = ["method", *(f"qps @ batch {b}" for b in sizes)]
    rows = [
        [name, *(_f(m.get("throughput_qps", {}).get(b), digits=2) for b in sizes)]
        for name, m in methods.items()
    ]
    return _md(head, rows)


def ratios_line(ratios: Mapping[str, Any]) -> str:
    """``latent/explicit = 0.12 (-88%), latent/naive = 1.10`` (means), then the same for p50."""
    parts = []
    for key, label in (
        ("latent_vs_explicit", "latent/explicit"),
        ("latent_vs_naive", "latent/naive"),
        ("latent_vs_explicit_p50", "p50 latent/explicit"),
        ("latent_vs_naive_p50", "p50 latent/naive"),
    ):
        r = ratios.get(key)
        if r is not None:
            extra = f" ({100 * (r - 1):+.0f}%)" if key.startswith("latent_vs_explicit") else ""
            parts.append(f"{label} = {r:.3f}{extra}")
    return ", ".join(parts) if parts else "no ratios (a method is missing)"


def _md(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def retrieval_table(methods: Mapping[str, Mapping[str, Any]], k: int) -> str:
    """Recall, MRR, documents and latency per method (``eval --retrieval-only``), as markdown."""
    head = ["method", "n", f"recall@{k}", "MRR", "docs", "steps", "mean ms", "p50 ms", "p95 ms",
            "embed", "search", OTHER]  # fmt: skip
    rows = []
    for name, m in methods.items():
        st = m.get("stages_ms", {})
        rows.append(
            [
                name,
                str(m.get("n", "-")),
                _f(m.get("recall_at_k"), pct=True),
                _f(m.get("mrr"), digits=3),
                _f(m.get("docs")),
                _f(m.get("mean_steps"), digits=2),
                _f(m.get("mean_ms"), digits=2),
                _f(m.get("p50_ms"), digits=2),
                _f(m.get("p95_ms"), digits=2),
                *(_f(st.get(s), digits=2) for s in ("embed", "search", OTHER)),
            ]
        )
    return _md(head, rows)

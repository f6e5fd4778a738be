"""``latentrag bench``: the latency benchmark of LatentRAG vs explicit agentic RAG vs naive RAG.

Everything runs without trained weights: random-weight LLMs of named shapes, the real MiniLM or a
random Qwen3-Embedding-shaped retriever, a synthetic corpus, and generation lengths and actions
forced to the paper's per-question averages (Table 8). One run measures all three methods,
interleaved question by question (the method order rotates), so drift affects all equally.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..evaluation.stats import latency_summary, ratio
from . import forcing as F
from . import synthetic

METHODS = ("latent", "explicit", "naive")
LLM_CHOICES = ("tiny", "qwen2.5-0.5b", "qwen2.5-3b", "qwen2.5-7b")
RETRIEVER_CHOICES = ("minilm", "qwen3-emb-0.6b")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "mixed")


@dataclass
class BenchConfig:
    """Settings of one benchmark run (the CLI's options)."""

    shape: str = "tiny"  # LLM shape (model_zoo.LLM_SHAPES)
    retriever: str = "minilm"  # "minilm" (real weights) or "qwen3-emb-0.6b" (random)
    corpus_size: int = 100_000  # synthetic documents in the store
    questions: int = 20  # questions timed one by one (batch 1) per method
    steps: int = 2  # retrieval steps per question (all methods but naive)
    batches: Sequence[int] = (1, 8, 32)  # batch sizes for throughput
    decode: bool = False  # LatentRAG also decodes its thoughts and subqueries
    device: str | None = None  # None: CUDA when available
    dtype: str = "auto"  # "auto" (as a loaded model: devices.auto_dtypes), or a DTYPE_CHOICES
    threads: int | None = None  # torch CPU threads (None: auto, 1 for tiny shapes)
    doc_tokens: int = 130  # LLM tokens per document
    top_k: int = 3  # documents per retrieval
    warmup: int = 2  # untimed warm-up questions per method (and one untimed run per batch size)
    seed: int = 0
    show_progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Setup:
    """Models, store and questions of a run."""

    model: Any
    explicit: Any
    naive: Any
    store: Any
    forcer: F.LatentForcer
    questions: list[str]


def machine_info(device: Any) -> dict[str, Any]:
    """Where the numbers came from: CPU, cores, GPU, library versions, threads."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    try:
        import faiss

        info["faiss"] = getattr(faiss, "__version__", "?")
    except ImportError:
        info["faiss"] = None
    return info


def build(cfg: BenchConfig) -> Setup:
    """Build the random-weight models, the synthetic store and the questions."""

    from ..baselines.explicit import ExplicitAgent
    from ..baselines.naive import NaiveRAG
    from ..cli.common import dtype_kwargs
    from ..devices import loaded_dtypes, resolve_device
    from ..model import LatentRAG
    from ..model_zoo import LLM_SHAPES, build_encoder, build_llm, build_tokenizer

    if cfg.shape not in LLM_SHAPES:
        raise ValueError(f"unknown shape {cfg.shape!r}; choose from {', '.join(LLM_CHOICES)}")
    if cfg.retriever not in RETRIEVER_CHOICES:
        raise ValueError(
            f"unknown retriever {cfg.retriever!r}; choose from {', '.join(RETRIEVER_CHOICES)}"
        )
    if cfg.steps < 0 or cfg.questions < 1:
        raise ValueError("--steps must be >= 0 and --questions >= 1")
    if cfg.dtype not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; choose from {', '.join(DTYPE_CHOICES)}")
    tok = build_tokenizer()
    dev = resolve_device(cfg.device)
    dtype, wide = loaded_dtypes(dev, **dtype_kwargs(cfg.dtype))
    llm = build_llm(cfg.shape, seed=cfg.seed, device=dev, dtype=dtype)
    llm.config.name_or_path = f"random:{cfg.shape}"
    if cfg.retriever == "minilm":
        retriever: Any = "minilm"
        rid = None
    else:
        enc_tok = copy.deepcopy(tok)
        retriever = (build_encoder(cfg.retriever, seed=cfg.seed, device=dev, dtype=dtype), enc_tok)
        rid = f"random:{cfg.retriever}"
    model = LatentRAG.init(
        llm, retriever, tokenizer=tok, retriever_id=rid, device=dev, dtype=dtype, seed=cfg.seed,
        top_k=cfg.top_k, max_steps=cfg.steps,
    )  # fmt: skip
    explicit = ExplicitAgent.init(
        model.llm, model.doc_tower, tokenizer=model.tokenizer, device=model.device,
        dtype=dtype, top_k=cfg.top_k, max_turns=cfg.steps,
    )  # fmt: skip
    if wide is not None:  # both agents run as loaded ones would
        model.to_device(dev, dtype, wide)
        explicit.to_device(dev, dtype, wide)
    naive = NaiveRAG(model, top_k=cfg.top_k)
    texts = synthetic.doc_texts(model.tokenizer, doc_tokens=cfg.doc_tokens, seed=cfg.seed)
    store = synthetic.synthetic_store(
        model.encoder_id, model.dim, cfg.corpus_size, texts, seed=cfg.seed,
        show_progress=cfg.show_progress,
    )  # fmt: skip
    n_q = max(cfg.questions + cfg.warmup, max(cfg.batches, default=1))
    return Setup(
        model, explicit, naive, store, F.LatentForcer(model), synthetic.questions(n_q, cfg.seed)
    )


def _latent_plan(steps: int, index: int, decode: bool) -> tuple[int, list[list[int]]]:
    """Answer tokens before ``</answer>`` and, per step, decode lengths of question ``index``."""
    answer = max(0, F.spread(F.LATENT_ANSWER_TOKENS, index) - 1)  # + the stop token
    if not decode:
        return answer, [[] for _ in range(steps + 1)]
    th = F.split(F.spread(F.LATENT_DECODED_THOUGHT_TOKENS, index), steps + 1)
    sq = F.split(F.spread(F.LATENT_DECODED_SUBQUERY_TOKENS, index), steps)
    # decode order: per step, the thought then the subquery
    return answer, [[th[s], sq[s]] if s < steps else [th[s]] for s in range(steps + 1)]


def run_method(setup: Setup, cfg: BenchConfig, method: str, idx: Sequence[int]) -> list[Any]:
    """Run one method on the questions ``idx`` as one batch, with forced actions and lengths."""
    from ..baselines.explicit_force import ExplicitForce

    qs = [setup.questions[i] for i in idx]
    if method == "explicit":
        force = [
            ExplicitForce.from_totals(
                cfg.steps,
                F.EXPLICIT_THOUGHT_TOKENS,
                F.EXPLICIT_SUBQUERY_TOKENS,
                F.EXPLICIT_ANSWER_TOKENS,
                index=i,
            )  # fmt: skip
            for i in idx
        ]
        return setup.explicit.run_batch(qs, setup.store, max_turns=cfg.steps, force=force)
    if method == "naive":
        answers = [max(0, F.spread(F.NAIVE_ANSWER_TOKENS, i) - 1) for i in idx]
        with setup.forcer.plan(answer=answers):
            return setup.naive.run_batch(qs, setup.store)
    plans = [_latent_plan(cfg.steps, i, cfg.decode) for i in idx]
    per_step = [[d for _, steps in plans for d in steps[s]] for s in range(cfg.steps + 1)]
    with setup.forcer.plan(answer=[a for a, _ in plans], decode=per_step if cfg.decode else ()):
        return setup.model.run_batch(qs, setup.store, max_steps=cfg.steps, decode=cfg.decode)


def run_bench(cfg: BenchConfig, setup: Setup | None = None) -> dict[str, Any]:
    """Run the benchmark and return the JSON-able report (see ``docs/benchmarks.md``)."""
    import torch

    threads = torch.get_num_threads()
    want = cfg.threads
    if want is None and cfg.shape.startswith("tiny") and cfg.device in (None, "cpu"):
        want = 1  # per-op overhead dominates tiny models; more threads only add jitter
    faiss = _faiss_or_none()
    faiss_threads = faiss.omp_get_max_threads() if faiss is not None else None
    if want is not None:
        torch.set_num_threads(want)
        if faiss is not None:
            faiss.omp_set_num_threads(want)  # the store search uses its own OpenMP pool
    try:
        return _run(cfg, setup)
    finally:
        torch.set_num_threads(threads)
        if faiss is not None:
            faiss.omp_set_num_threads(faiss_threads)


def _faiss_or_none() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _run(cfg: BenchConfig, setup: Setup | None) -> dict[str, Any]:
    import torch

    from ..speed.precision import precision_name

    t_build = time.perf_counter()
    setup = setup or build(cfg)
    for engine in (setup.model.engine, setup.explicit.engine):
        engine.config.threads = torch.get_num_threads()  # the passes run in its thread
        engine.warmup()  # one-off costs before anything is timed
    build_s = time.perf_counter() - t_build
    per: dict[str, list[Any]] = {m: [] for m in METHODS}
    wall: dict[str, list[float]] = {m: [] for m in METHODS}
    n_total = cfg.warmup + cfg.questions
    bar = tqdm(total=n_total * len(METHODS), desc="bench latency", disable=not cfg.show_progress)
    for q in range(n_total):
        order = METHODS[q % 3 :] + METHODS[: q % 3]  # rotate so no method always goes first
        for m in order:
            t0 = time.perf_counter()
            res = run_method(setup, cfg, m, [q])[0]
            dt = (time.perf_counter() - t0) * 1e3
            if q >= cfg.warmup:
                per[m].append(res)
                wall[m].append(dt)
            bar.update(1)
    bar.close()
    throughput: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    for m in METHODS:
        throughput[m]["1"] = 1e3 / (sum(wall[m]) / len(wall[m]))
    big = [b for b in cfg.batches if b > 1]
    bar = tqdm(
        total=len(big) * len(METHODS), desc="bench throughput", disable=not cfg.show_progress
    )
    for j, b in enumerate(big):
        order = METHODS[j % 3 :] + METHODS[: j % 3]
        for m in order:
            run_method(setup, cfg, m, list(range(b)))  # untimed: first use of this batch shape
            t0 = time.perf_counter()
            run_method(setup, cfg, m, list(range(b)))
            throughput[m][str(b)] = b / (time.perf_counter() - t0)
            bar.update(1)
    bar.close()
    methods: dict[str, Any] = {}
    for m in METHODS:
        s = latency_summary(per[m], wall[m])
        s["throughput_qps"] = throughput[m]
        s["mean_steps"] = sum(sum(st.action == "retrieve" for st in r.steps) for r in per[m]) / len(
            per[m]
        )
        methods[m] = s
    lat, exp, nai = (methods[m]["mean_ms"] for m in METHODS)
    return {
        "shape": cfg.shape,
        "retriever": cfg.retriever,
        "corpus_size": cfg.corpus_size,
        "questions": cfg.questions,
        "steps": cfg.steps,
        "batches": list(cfg.batches),
        "decode": cfg.decode,
        "dtype": precision_name(setup.model),
        "top_k": cfg.top_k,
        "doc_tokens": cfg.doc_tokens,
        "forced_lengths": {
            "explicit": {
                "thought": F.EXPLICIT_THOUGHT_TOKENS,
                "subquery": F.EXPLICIT_SUBQUERY_TOKENS,
                "answer": F.EXPLICIT_ANSWER_TOKENS,
            },
            "latent": {"answer": F.LATENT_ANSWER_TOKENS}
            | (
                {
                    "decoded_thought": F.LATENT_DECODED_THOUGHT_TOKENS,
                    "decoded_subquery": F.LATENT_DECODED_SUBQUERY_TOKENS,
                }
                if cfg.decode
                else {}
            ),
            "naive": {"answer": F.NAIVE_ANSWER_TOKENS},
        },
        "machine": machine_info(setup.model.device),
        "build_s": build_s,
        "methods": methods,
        "ratios": {
            "latent_vs_explicit": ratio(lat, exp),
            "latent_vs_naive": ratio(lat, nai),
            "latent_vs_explicit_p50": ratio(
                methods["latent"]["p50_ms"], methods["explicit"]["p50_ms"]
            ),
            "latent_vs_naive_p50": ratio(methods["latent"]["p50_ms"], methods["naive"]["p50_ms"]),
        },
    }

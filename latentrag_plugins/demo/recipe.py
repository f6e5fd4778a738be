"""The demo recipe: world -> base LM -> LatentRAG and explicit agent trained from the same
trajectories -> evaluation. ``latentrag demo --build DIR`` runs it; a test runs a toy preset.

Every step is a ``latentrag`` command (run in-process), so the recipe exercises exactly what users
run. The base LM is pretrained on worlds of *other* seeds (their passages, and reading texts built
from their trajectories: see :mod:`.reading`), so it learns the language and how to read retrieved
passages but none of the seed-0 facts, and cannot answer test questions from memory.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import LatentRAGError
from ..io_utils import write_json_atomic, write_text_atomic


class Run(NamedTuple):
    """One further training run, started from the previous run's checkpoint."""

    steps: int  # optimizer steps
    lr: float  # peak learning rate (linear decay to 0)
    copies: int  # renamed copies of the world added to its trajectories (0: none)
    batch_size: int = 8  # trajectories per step
    warmup_ratio: float = 0.0  # share of the steps spent warming up
    seed: int | None = None  # data order and dropout (None: the run's number, 1, 2, ...)


@dataclass(frozen=True)
class Preset:
    """Sizes of one recipe run."""

    world_size: str  # "small" or "default"
    search: str  # retriever of the oracle agent: "minilm" or "lexical"
    base_shape: str  # model_zoo LLM shape of the base LM
    base_vocab: int  # BPE vocabulary size (unused with shared_vocab)
    shared_vocab: bool  # the base LM splits text as the retriever does (demo/shared_vocab.py)
    base_steps: int  # pretraining steps
    base_batch: int  # pretraining rows per step
    base_seq_len: int  # tokens per pretraining row
    base_lr: float  # pretraining peak learning rate
    base_seeds: tuple[int, ...]  # worlds the base LM is pretrained on (passages + reading)
    tokenizer_seeds: tuple[int, ...]  # worlds whose passages and reading texts (not the recipe
    # world's) the tokenizer is built on. A BPE: one unseen world, so names split as in the test
    # world. Shared vocabulary: every world; it only picks which retriever pieces are kept.
    reading_steps: int  # further pretraining steps on reading texts alone
    reading_seeds: tuple[int, ...]  # worlds whose reading texts those steps use
    reading_lr: float  # their peak learning rate (a new warm-up and cosine schedule)
    trajectories: int  # training trajectories used (a seeded sample)
    epochs: int
    batch_size: int
    lr: float
    lambda_ret: float  # weight of L_ret (see docs/demo-model.md for why not the paper's 1)
    max_steps: int | None  # LatentRAG: cap on training steps (None: epochs decide)
    explicit_max_steps: int | None  # the explicit agent's cap
    more_runs: tuple[Run, ...]  # LatentRAG: further runs, each from the last checkpoint, with
    # seeds 1, 2, ... (other orders of the data) and λ_ret as above; their data is the world's
    # trajectories plus `copies` renamed copies of the world (world/renaming.py, copy seeds 1, 2,
    # ...)
    explicit_more_runs: tuple[Run, ...]  # the same for the explicit agent
    eval_questions: int  # test questions evaluated


PRESETS = {
    # What the shipped demo checkpoints were built with (docs/demo-model.md).
    "demo": Preset(
        world_size="default", search="minilm",
        base_shape="demo", base_vocab=4096, shared_vocab=True, base_steps=2000, base_batch=8,
        base_seq_len=512, base_lr=8e-4, base_seeds=(1, 2, 3), tokenizer_seeds=tuple(range(8)),
        reading_steps=1500, reading_seeds=(1, 2, 3, 5, 6, 7), reading_lr=5e-4,
        trajectories=4000, epochs=2, batch_size=8, lr=5e-4, lambda_ret=8.0, max_steps=700,
        explicit_max_steps=350,
        # The last three runs of each model ran on one H100 (docs/demo-model.md).
        more_runs=(Run(400, 3e-4, 0), *(Run(800, 3e-4, 0),) * 4, Run(800, 3e-4, 2),
                   Run(800, 3e-4, 2), Run(800, 3e-4, 6), Run(500, 3e-4, 6),
                   Run(433, 3e-4, 6, 32, 0.02, 12), Run(433, 3e-4, 6, 32, 0.02, 13),
                   Run(1400, 3e-4, 6, 32, 0.02, 14)),
        explicit_more_runs=(Run(800, 3e-4, 0), Run(800, 3e-4, 2), Run(800, 3e-4, 6),
                            Run(500, 3e-4, 6), Run(947, 3e-4, 6, 32, 0.02, 7),
                            Run(947, 3e-4, 6, 32, 0.02, 8), Run(2400, 3e-4, 6, 32, 0.02, 9)),
        eval_questions=600,
    ),
    # A few minutes on a CPU: keeps the recipe working in the tests.
    "test": Preset(
        world_size="small", search="lexical",
        base_shape="tiny", base_vocab=600, shared_vocab=True, base_steps=20, base_batch=8,
        base_seq_len=256, base_lr=1e-3, base_seeds=(1,), tokenizer_seeds=(0, 1, 3),
        reading_steps=5, reading_seeds=(3,), reading_lr=1e-3,
        trajectories=24, epochs=1, batch_size=8, lr=5e-4, lambda_ret=4.0, max_steps=3,
        explicit_max_steps=3, more_runs=(Run(2, 3e-4, 0), Run(2, 3e-4, 1, 4, 0.5)),
        explicit_more_runs=(Run(2, 3e-4, 0), Run(2, 3e-4, 2)), eval_questions=4,
    ),
}  # fmt: skip


def run_recipe(
    out: str | Path, preset: str = "demo", *, seed: int = 0, device: str | None = None
) -> dict:
    """Build the demo models under ``out`` and evaluate them; returns the eval report.

    ``device`` (default: a GPU if there is one) runs the base LM's pretraining, the indexes,
    prepared data and the eval; ``latentrag train`` picks its device itself (a GPU if any).

    Raises:
        LatentRAGError: ``out`` exists and is not an empty directory (nothing is overwritten).
    """
    from ..cli.main import main
    from .base_lm import build_base_lm, continue_pretraining
    from .reading import READING_TOKENS, reading_accuracy, world_texts

    p = PRESETS[preset]
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LatentRAGError(f"{out}: exists and is not an empty directory; give a new one")
    out.mkdir(parents=True, exist_ok=True)
    world, base = out / "world", out / "base-lm"

    def cli(*args: object) -> None:
        argv = [str(a) for a in args]
        if device and argv[0] in ("index", "prepare", "eval"):  # train picks its own device
            argv += ["--device", device]
        code = main(argv)
        if code:
            raise RuntimeError(f"recipe step failed ({code}): latentrag {' '.join(map(str, args))}")

    cli("world", "--seed", seed, "--out", world, "--size", p.world_size, "--search", p.search)
    seeds = {*p.base_seeds, *p.tokenizer_seeds, *p.reading_seeds}
    worlds = {s: world_texts(s, p.world_size) for s in sorted(seeds)}  # (passages, reading)
    texts = [t for s in p.base_seeds for part in worlds[s] for t in part]
    tok_texts = [t for s in p.tokenizer_seeds for t in worlds[s][0]]  # passages
    tok_texts += [
        t for s in p.tokenizer_seeds if s != seed for t in worlds[s][1]
    ]  # not our questions
    build_base_lm(
        texts, base, shape=p.base_shape, vocab_size=p.base_vocab, seq_len=p.base_seq_len,
        steps=p.base_steps, batch_size=p.base_batch, lr=p.base_lr, special_tokens=READING_TOKENS,
        tokenizer_texts=tok_texts,
        retriever="minilm" if p.shared_vocab else None, device=device,
    )  # fmt: skip
    reading = [t for s in p.reading_seeds for t in worlds[s][1]]
    continue_pretraining(
        base, reading, seq_len=p.base_seq_len, steps=p.reading_steps, batch_size=p.base_batch,
        lr=p.reading_lr, device=device,
    )  # fmt: skip
    test_q = world / "questions_test.jsonl"
    base_reading = reading_accuracy(base, world / "corpus.jsonl", test_q, p.eval_questions)
    lines = (world / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()
    random.Random(seed).shuffle(lines)
    traj = out / "trajectories.jsonl"
    write_text_atomic(traj, "\n".join(lines[: p.trajectories]) + "\n")

    common = ["--full-finetune", "--epochs", p.epochs, "--no-progress"]
    train = [*common, "--batch-size", p.batch_size, "--lr", p.lr]
    cap = ["--max-steps", p.max_steps] if p.max_steps else []
    explicit_cap = ["--max-steps", p.explicit_max_steps] if p.explicit_max_steps else []
    cli("init", "--base-model", base, "--force", out / "init")
    cli("index", world / "corpus.jsonl", out / "index", "--model", out / "init")
    cli(
        "prepare",
        "--model",
        out / "init",
        "--index",
        out / "index",
        traj,
        out / "prep",
        "--calibrate-beta",
    )
    latent = ["--query-tower-layers", 1, "--lambda-ret", p.lambda_ret]
    data = {0: (traj, out / "prep")}  # renamed copies -> (trajectories, prepared data)
    latent_copies = {r.copies for r in p.more_runs}
    for c in sorted({*latent_copies, *(r.copies for r in p.explicit_more_runs)} - {0}):
        data[c] = _renamed_data(cli, out, world, traj, c, prepare=c in latent_copies)
    latent_more = [(r, [*latent, "--data", data[r.copies][1], *common]) for r in p.more_runs]
    _train_runs(cli, out, "latent", out / "init",
                [*latent, "--data", out / "prep", *train, *cap], latent_more)  # fmt: skip
    cli("init", "--base-model", base, "--explicit", "--force", out / "explicit-init")
    explicit_more = [
        (r, ["--mode", "explicit", "--data", data[r.copies][0], *common])
        for r in p.explicit_more_runs
    ]
    _train_runs(cli, out, "explicit", out / "explicit-init",
                ["--mode", "explicit", "--data", traj, *train, *explicit_cap],
                explicit_more)  # fmt: skip
    cli("eval", "--model", out / "latent", "--index", out / "index",
        "--questions", test_q, "--limit", p.eval_questions,
        "--baselines", f"explicit:{out / 'explicit'},naive", "--json", out / "eval.json")  # fmt: skip
    write_json_atomic(
        out / "recipe.json",
        {"preset": preset, "seed": seed, **asdict(p), "base_reading_em": base_reading},
    )
    return json.loads((out / "eval.json").read_text())


def _renamed_data(
    cli: Callable[..., None], out: Path, world: Path, traj: Path, copies: int, *, prepare: bool
) -> tuple[Path, Path]:
    """The trajectories plus ``copies`` renamed copies of them and, if ``prepare``, their prepared
    data (retrieved from the world's corpus plus its renamed copies, at the calibrated β of
    ``out/prep``)."""
    from ..world.renaming import write_renamed_copy

    corpus, trajs = [world / "corpus.jsonl"], [traj]
    for seed in range(1, copies + 1):
        if not (out / f"renamed-{seed}" / "trajectories.jsonl").is_file():
            write_renamed_copy(world, traj, out / f"renamed-{seed}", seed)
        corpus.append(out / f"renamed-{seed}" / "corpus.jsonl")
        trajs.append(out / f"renamed-{seed}" / "trajectories.jsonl")
    files = {"corpus": corpus, "trajectories": trajs}
    for name, parts in files.items():
        text = "".join(f.read_text(encoding="utf-8") for f in parts)
        write_text_atomic(out / f"{name}-renamed-{copies}.jsonl", text)
    prep = out / f"prep-renamed-{copies}"
    if prepare:
        index = out / f"index-renamed-{copies}"
        cli("index", out / f"corpus-renamed-{copies}.jsonl", index, "--model", out / "init")
        beta = json.loads((out / "prep" / "manifest.json").read_text())["beta"]
        cli("prepare", "--model", out / "init", "--index", index,
            out / f"trajectories-renamed-{copies}.jsonl", prep, "--beta", beta)  # fmt: skip
    return out / f"trajectories-renamed-{copies}.jsonl", prep


def _train_runs(
    cli: Callable[..., None],
    out: Path,
    name: str,
    start: Path,
    first: list[Any],
    more: list[tuple[Run, list[Any]]],
) -> None:
    """Train ``out/name`` from ``start`` with the ``first`` flags, then each further run of
    ``more`` (its settings and flags; seeds 1, 2, ... unless set) from the last checkpoint; intermediate
    runs are kept as ``out/name-0``, ``out/name-1``, ..."""
    runs = [out / f"{name}-{i}" for i in range(len(more))] + [out / name]
    cli("train", "--model", start, "--out", runs[0], *first)
    for i, (r, flags) in enumerate(more):
        cli("train", "--model", runs[i], "--out", runs[i + 1], *flags, "--lr", r.lr,
            "--max-steps", r.steps, "--batch-size", r.batch_size,
            "--warmup-ratio", r.warmup_ratio,
            "--seed", i + 1 if r.seed is None else r.seed)  # fmt: skip

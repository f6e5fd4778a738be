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
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    """Sizes of one recipe run."""

    world_size: str  # "small" or "default"
    search: str  # retriever of the oracle agent: "minilm" or "lexical"
    base_shape: str  # model_zoo LLM shape of the base LM
    base_vocab: int  # tokenizer vocabulary size
    base_steps: int  # pretraining steps
    base_batch: int  # pretraining rows per step
    base_seq_len: int  # tokens per pretraining row
    base_lr: float  # pretraining peak learning rate
    base_seeds: tuple[int, ...]  # worlds the base LM is pretrained on (passages + reading)
    tokenizer_seed: int  # world the tokenizer is trained on (none of the others)
    trajectories: int  # training trajectories used (a seeded sample)
    epochs: int
    batch_size: int
    lr: float
    max_steps: int | None  # cap on training steps per model (None: epochs decide)
    eval_questions: int  # test questions evaluated


PRESETS = {
    # What the shipped demo checkpoints were built with (docs/demo-model.md).
    "demo": Preset("default", "minilm", "demo", 4096, 2500, 8, 512, 8e-4, (1, 2, 3), 4,
                   4000, 1, 8, 5e-4, 450, 200),
    # A few minutes on a CPU: keeps the recipe working in the tests.
    "test": Preset("small", "lexical", "tiny", 600, 20, 8, 256, 1e-3, (1,), 2,
                   24, 1, 8, 5e-4, 3, 4),
}  # fmt: skip


def run_recipe(out: str | Path, preset: str = "demo", *, seed: int = 0) -> dict:
    """Build the demo models under ``out`` and evaluate them; returns the eval report."""
    from ..cli.main import main
    from .base_lm import build_base_lm
    from .reading import READING_TOKENS, world_texts

    p = PRESETS[preset]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world, base = out / "world", out / "base-lm"

    def cli(*args: object) -> None:
        code = main([str(a) for a in args])
        if code:
            raise RuntimeError(f"recipe step failed ({code}): latentrag {' '.join(map(str, args))}")

    cli("world", "--seed", seed, "--out", world, "--size", p.world_size, "--search", p.search)
    texts = [t for s in p.base_seeds for part in world_texts(s, p.world_size) for t in part]
    build_base_lm(
        texts, base, shape=p.base_shape, vocab_size=p.base_vocab, seq_len=p.base_seq_len,
        steps=p.base_steps, batch_size=p.base_batch, lr=p.base_lr, special_tokens=READING_TOKENS,
        tokenizer_texts=[t for part in world_texts(p.tokenizer_seed, p.world_size) for t in part],
    )  # fmt: skip
    lines = (world / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()
    random.Random(seed).shuffle(lines)
    traj = out / "trajectories.jsonl"
    traj.write_text("\n".join(lines[: p.trajectories]) + "\n", encoding="utf-8")

    train = ["--full-finetune", "--epochs", p.epochs, "--batch-size", p.batch_size, "--lr", p.lr]
    train += ["--max-steps", p.max_steps] if p.max_steps else []
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
    cli("train", "--model", out / "init", "--data", out / "prep", "--out", out / "latent",
        "--query-tower-layers", 1, "--no-progress", *train)  # fmt: skip
    cli("init", "--base-model", base, "--explicit", "--force", out / "explicit-init")
    cli("train", "--mode", "explicit", "--model", out / "explicit-init", "--data", traj,
        "--out", out / "explicit", "--no-progress", *train)  # fmt: skip
    cli("eval", "--model", out / "latent", "--index", out / "index",
        "--questions", world / "questions_test.jsonl", "--limit", p.eval_questions,
        "--baselines", f"explicit:{out / 'explicit'},naive", "--json", out / "eval.json")  # fmt: skip
    (out / "recipe.json").write_text(
        json.dumps({"preset": preset, "seed": seed, **asdict(p)}, indent=2)
    )
    return json.loads((out / "eval.json").read_text())

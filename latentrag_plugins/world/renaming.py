"""Renamed copies of a world: every entity gets a fresh invented name of its kind, and the corpus
and the trajectories are rewritten with it.

The facts stay the same; only the names change. Training on such copies next to the original
teaches a model to carry names it has never seen instead of memorising the training names: the
demo LatentRAG model retrieved 99% of 1-hop training questions but 86% of test questions, whose
names it had never seen (docs/demo-model.md).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..io_utils import atomic_path, read_jsonl
from .names import NameGenerator


def rename_map(entities: Iterable[dict[str, Any]], seed: int) -> dict[str, str]:
    """A fresh name for every entity (``{"name", "kind", "attrs"}`` rows of ``entities.jsonl``).

    New names are unique and differ from every old one; their invented words are new too, except
    that people's given names come from the generator's fresh pools and may repeat an old word.
    """
    rows = list(entities)
    gen = NameGenerator(random.Random(seed), avoid=[e["name"] for e in rows])
    makers: dict[str, Callable[[dict[str, Any]], str]] = {
        "person": lambda a: gen.person(a.get("gender", "f")),
        "city": lambda a: gen.city(),
        "country": lambda a: gen.country(),
        "organisation": lambda a: gen.organisation(a["type"]),
        "film": lambda a: gen.film(),
        "book": lambda a: gen.book(),
    }
    out = {}
    for e in rows:
        if e["kind"] not in makers:
            raise ValueError(f"entity {e.get('id', e['name'])!r}: unknown kind {e['kind']!r}")
        out[e["name"]] = makers[e["kind"]](e.get("attrs", {}))
    return out


def renamer(mapping: dict[str, str]) -> Callable[[str], str]:
    """A function replacing every whole-word occurrence of a mapped name (longest first)."""
    if not mapping:
        return lambda text: text
    names = sorted(mapping, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
    return lambda text: pattern.sub(lambda m: mapping[m.group(1)], text)


def write_renamed_copy(
    world: str | Path, trajectories: str | Path, out: str | Path, seed: int
) -> dict[str, int]:
    """Write a renamed copy of a world directory's corpus and of a trajectory file.

    Args:
        world: A ``latentrag world`` directory (``corpus.jsonl``, ``entities.jsonl``).
        trajectories: Trajectories of that world (JSONL).
        out: Directory to write ``corpus.jsonl`` and ``trajectories.jsonl`` into; every
            document and trajectory id gets the prefix ``r{seed}-``.
        seed: Seed of the new names.

    Returns:
        Counts of ``names``, ``documents`` and ``trajectories`` written.
    """
    world, out = Path(world), Path(out)
    mapping = rename_map((row for _, row in read_jsonl(world / "entities.jsonl")), seed)
    rename, prefix = renamer(mapping), f"r{seed}-"

    def rewrite(x: Any, key: str = "") -> Any:
        if isinstance(x, dict):
            return {k: rewrite(v, k) for k, v in x.items()}
        if isinstance(x, list):
            return [rewrite(v, key) for v in x]
        if isinstance(x, str):
            return prefix + x if key == "id" else rename(x)
        return x

    counts = {"names": len(mapping)}
    out.mkdir(parents=True, exist_ok=True)
    for name, src in (("corpus", world / "corpus.jsonl"), ("trajectories", Path(trajectories))):
        n = 0
        with atomic_path(out / f"{name}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as w:
            for _, row in read_jsonl(src):
                w.write(json.dumps(rewrite(row), ensure_ascii=False) + "\n")
                n += 1
        counts["documents" if name == "corpus" else name] = n
    return counts


__all__ = ["rename_map", "renamer", "write_renamed_copy"]

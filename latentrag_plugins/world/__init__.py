"""A seeded generator of a fictional, self-consistent multi-hop QA world.

Pure Python (stdlib ``random``): entities with invented names, Wikipedia-like passages with
distractors, 1-hop / 2-hop / 3-hop / comparison questions in train/dev/test splits whose subject
entities are disjoint, and teacher trajectories from an oracle agent that reads retrieved text.

Example:
    >>> from latentrag_plugins.world import build_dataset, write_dataset
    >>> ds = build_dataset(seed=0, size="small")
    >>> summary = write_dataset(ds, "out/world")

See ``docs/world.md`` for the file formats.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .entities import KINDS, SIZES, SPLITS, Entity, World, generate_world
from .lexical import LexicalIndex, lexical_search_fn
from .oracle import SearchFn, find_fact, generate_trajectories
from .passages import Corpus, build_corpus
from .questions import Question, build_questions, check_answerable, check_split_disjoint

__all__ = [
    "Corpus",
    "Entity",
    "LexicalIndex",
    "Question",
    "SIZES",
    "SearchFn",
    "World",
    "WorldDataset",
    "build_corpus",
    "build_dataset",
    "build_questions",
    "summarize",
    "check_answerable",
    "check_split_disjoint",
    "find_fact",
    "generate_trajectories",
    "generate_world",
    "lexical_search_fn",
    "write_dataset",
]

GENERATOR_VERSION = 1


@dataclass
class WorldDataset:
    """Everything generated for one seed.

    Attributes:
        seed: The seed.
        size: ``"small"`` or ``"default"``.
        search: Name of the search backend used for trajectories.
        world: The entity graph.
        corpus: The passages.
        questions: Split -> questions.
        trajectories: Kept oracle trajectories for the training questions.
        trajectory_stats: Kept/dropped counts (see :func:`generate_trajectories`).
    """

    seed: int
    size: str
    search: str
    world: World
    corpus: Corpus
    questions: dict[str, list[Question]]
    trajectories: list[dict[str, Any]]
    trajectory_stats: dict[str, Any]


def build_dataset(
    seed: int,
    size: str = "default",
    make_search: Callable[[Sequence[dict[str, Any]]], SearchFn] | None = None,
    search_name: str = "lexical",
    progress: bool = False,
) -> WorldDataset:
    """Generate the world, passages, questions and trajectories for ``seed``.

    Args:
        seed: Random seed; the same seed (and search) gives identical output.
        size: ``"small"`` (a few hundred passages) or ``"default"`` (a few thousand).
        make_search: Builds ``search_fn(text, k)`` from the corpus docs; defaults to lexical BM25.
        search_name: Name recorded in the summary.
        progress: Show a progress bar for trajectory generation.

    Returns:
        The dataset.
    """
    world = generate_world(seed, size)
    corpus = build_corpus(world, seed)
    questions = build_questions(world, corpus, seed, SIZES[size].questions_per_kind)
    search_fn = (make_search or lexical_search_fn)(corpus.docs)
    trajs, stats = generate_trajectories(
        questions["train"], world, search_fn, seed, progress=progress
    )
    return WorldDataset(seed, size, search_name, world, corpus, questions, trajs, stats)


def summarize(ds: WorldDataset) -> dict[str, Any]:
    """Counts per entity kind, question kind and split, plus trajectory stats."""
    qcounts: dict[str, dict[str, int]] = {}
    for split, qs in ds.questions.items():
        c = Counter(q.record["meta"]["kind"] for q in qs)
        qcounts[split] = {**dict(sorted(c.items())), "total": len(qs)}
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": ds.seed,
        "size": ds.size,
        "search": ds.search,
        "entities": {k: len(ds.world.of_kind(k)) for k in KINDS},
        "passages": len(ds.corpus.docs),
        "questions": qcounts,
        "trajectories": ds.trajectory_stats,
    }


WORLD_FILES = (
    "corpus.jsonl",
    *(f"questions_{split}.jsonl" for split in SPLITS),
    "trajectories.jsonl",
    "entities.jsonl",
    "world.json",
)


def refusal(path: str | os.PathLike[str]) -> str | None:
    """Why :func:`write_dataset` would refuse ``path`` (None: it may write there): a file, or a
    non-empty directory that is not a world's (no ``world.json``, or other files too)."""
    from ..io_utils import replaceable_dir

    return replaceable_dir(
        path, manifest="world.json", fmt=None, owned=WORLD_FILES, what="world directory"
    )


def write_dataset(ds: WorldDataset, out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the dataset's files to directory ``out``, all at once (an interrupted write leaves
    the previous world whole); an existing world there is replaced, anything else refused.

    Files: ``corpus.jsonl``, ``questions_{train,dev,test}.jsonl``, ``trajectories.jsonl``,
    ``entities.jsonl`` and ``world.json`` (the summary).

    Returns:
        The summary written to ``world.json``.

    Raises:
        LatentRAGError: ``out`` is a file, or a non-empty directory that is not a world's.
    """
    from ..errors import LatentRAGError
    from ..io_utils import atomic_path, write_json_atomic, write_jsonl_atomic

    if (why := refusal(out)) is not None:
        raise LatentRAGError(why)
    with atomic_path(out) as tmp:  # refusal() has vetted what it replaces
        tmp.mkdir()
        write_jsonl_atomic(tmp / "corpus.jsonl", ds.corpus.docs)
        for split in SPLITS:
            write_jsonl_atomic(
                tmp / f"questions_{split}.jsonl", [q.record for q in ds.questions[split]]
            )
        write_jsonl_atomic(tmp / "trajectories.jsonl", ds.trajectories)
        rows = [
            {"id": e.id, "kind": e.kind, "name": e.name, "split": e.split,
             "facts": {r: ds.world.value(e.id, r) for r in ds.world.relations_of(e.id)},
             "attrs": e.attrs, "doc_ids": ds.corpus.entity_docs.get(e.id, [])}
            for e in ds.world.entities.values()
        ]  # fmt: skip
        write_jsonl_atomic(tmp / "entities.jsonl", rows)
        summary = summarize(ds)
        write_json_atomic(tmp / "world.json", summary)
    return summary

"""Synthetic benchmark data: a corpus of random unit vectors with ~130-token texts, and questions.

Building the store from random unit vectors (``FaissStore.from_embeddings``) makes corpora of a
million documents cheap; the search cost is the real one (exact inner-product search over ``N``
vectors). Texts come from a small pool reused cyclically, sized by the LLM tokenizer so that every
document is about ``doc_tokens`` tokens long, as in the paper's Wikipedia chunks.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from tqdm.auto import tqdm

_WORDS = [
    "river",
    "city",
    "born",
    "film",
    "director",
    "author",
    "founded",
    "year",
    "country",
    "capital",
    "museum",
    "university",
    "company",
    "mountain",
    "island",
    "war",
    "king",
    "queen",
    "president",
    "album",
    "song",
    "team",
    "league",
    "season",
    "novel",
    "painter",
    "scientist",
    "physicist",
    "composer",
    "engineer",
    "church",
    "bridge",
    "railway",
    "station",
    "province",
    "village",
    "harbour",
    "festival",
    "award",
    "prize",
    "election",
    "parliament",
    "army",
    "battle",
    "treaty",
    "empire",
    "language",
    "school",
    "college",
    "library",
    "theatre",
    "opera",
    "symphony",
    "orchestra",
    "studio",
    "record",
    "label",
    "published",
    "released",
    "directed",
    "written",
    "produced",
    "married",
    "died",
    "moved",
    "worked",
    "studied",
    "taught",
    "north",
    "south",
    "east",
    "west",
    "central",
    "northern",
    "southern",
    "eastern",
    "western",
    "early",
    "late",
    "first",
    "second",
]


def _sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def doc_texts(tokenizer: Any, n: int = 64, doc_tokens: int = 130, seed: int = 0) -> list[str]:
    """``n`` distinct texts of about ``doc_tokens`` LLM tokens, each with a title line."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        title = f"{rng.choice(_WORDS).capitalize()} {rng.choice(_WORDS)} {i}"
        body = ""
        while (
            len(tokenizer(f"{title}\n{body}", add_special_tokens=False)["input_ids"]) < doc_tokens
        ):
            body = (body + " " + _sentence(rng, 12)).strip()
        ids = tokenizer(f"{title}\n{body}", add_special_tokens=False)["input_ids"][:doc_tokens]
        out.append(tokenizer.decode(ids))
    return out


def synthetic_store(
    encoder_id: str,
    dim: int,
    size: int,
    texts: list[str],
    *,
    seed: int = 0,
    chunk: int = 262144,
    use_gpu: bool | None = None,
    show_progress: bool = True,
) -> Any:
    """A FAISS store of ``size`` random unit vectors; document ``i`` has text ``texts[i % len]``.

    Args:
        encoder_id: Encoder id recorded by the store (the model's document tower).
        dim: Embedding dimension.
        size: Number of documents.
        texts: Text pool, reused cyclically.
        seed: Seed of the random vectors.
        chunk: Vectors generated and added per chunk (bounds memory).
        use_gpu: Put the index on the GPU (None: when available).
        show_progress: Show a progress bar.
    """
    from ..store.faiss_store import FaissStore

    if size < 1:
        raise ValueError("corpus size must be at least 1")
    rng = np.random.default_rng(seed)
    store = FaissStore(encoder_id, dim, use_gpu=False)
    with tqdm(total=size, desc="synthetic corpus", unit="doc", disable=not show_progress) as bar:
        for start in range(0, size, chunk):
            n = min(chunk, size - start)
            x = rng.standard_normal((n, dim), dtype=np.float32)  # (n, dim)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            ids = [str(i) for i in range(start, start + n)]
            store.add(ids, [texts[i % len(texts)] for i in range(start, start + n)], x)
            bar.update(n)
    store._settle(use_gpu)  # the search set up now, not in the first timed search
    return store


def questions(n: int, seed: int = 1) -> list[str]:
    """``n`` synthetic multi-hop-style questions of 15-20 words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b, c, d = (rng.choice(_WORDS) for _ in range(4))
        out.append(
            f"In which {a} was the {b} of the {c} {d} born, and which {rng.choice(_WORDS)} "
            f"did they found in question {i}?"
        )
    return out

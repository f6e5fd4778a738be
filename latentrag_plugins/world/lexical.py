"""A small lexical (BM25) search over the corpus, so the world generator works without a model."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    """a an and are as at be by did do for from has in is it its of on or the this to was were what
    when where which who whom whose with""".split()  # noqa: SIM905
)


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric tokens without common stop words."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOP]


class LexicalIndex:
    """BM25 over ``{"id","contents"}`` documents; the title line counts twice.

    Args:
        docs: The corpus.
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
    """

    def __init__(self, docs: Sequence[dict[str, Any]], k1: float = 1.2, b: float = 0.75) -> None:
        self.docs = list(docs)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        lengths: list[int] = []
        for i, d in enumerate(self.docs):
            title = d["contents"].split("\n", 1)[0]
            toks = tokenize(d["contents"]) + tokenize(title)
            lengths.append(len(toks))
            for tok, tf in Counter(toks).items():
                ids, tfs = postings.setdefault(tok, ([], []))
                ids.append(i)
                tfs.append(tf)
        n = max(len(self.docs), 1)
        lens = np.asarray(lengths, dtype=np.float64)
        avgdl = float(lens.mean()) if len(lens) else 1.0
        # token -> (doc indices, precomputed BM25 weights)
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for tok, (ids, tfs) in postings.items():
            idx = np.asarray(ids, dtype=np.int64)
            tf = np.asarray(tfs, dtype=np.float64)
            idf = math.log(1 + (n - len(ids) + 0.5) / (len(ids) + 0.5))
            norm = tf + k1 * (1 - b + b * lens[idx] / avgdl)
            self.postings[tok] = (idx, idf * tf * (k1 + 1) / norm)

    def search(self, text: str, k: int = 3) -> list[dict[str, Any]]:
        """Return the top ``k`` documents for ``text`` as ``{"id","contents","score"}``.

        Documents sharing no token with ``text`` are never returned. Ties are broken by corpus
        order, so results are deterministic.
        """
        scores = np.zeros(len(self.docs), dtype=np.float64)
        hit = False
        for tok in dict.fromkeys(tokenize(text)):
            if tok in self.postings:
                idx, w = self.postings[tok]
                scores[idx] += w
                hit = True
        if not hit or k <= 0:
            return []
        order = np.argsort(-scores, kind="stable")[:k]
        return [
            {
                "id": self.docs[i]["id"],
                "contents": self.docs[i]["contents"],
                "score": float(scores[i]),
            }
            for i in order.tolist()
            if scores[i] > 0
        ]

    __call__ = search


def lexical_search_fn(docs: Sequence[dict[str, Any]]) -> Callable[[str, int], list[dict[str, Any]]]:
    """Build a ``search_fn(text, k) -> list[dict]`` over ``docs`` (a :class:`LexicalIndex`)."""
    return LexicalIndex(docs).search

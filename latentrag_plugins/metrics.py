"""Answer and retrieval metrics (SQuAD / FlashRAG conventions).

- :func:`normalize_answer`: lowercase, strip punctuation, drop the articles a/an/the, collapse
  whitespace (SQuAD v1.1 ``normalize_answer``, as used by FlashRAG and Search-R1).
- :func:`exact_match` and :func:`f1`: the max over a list of gold answers.
- :func:`retrieval_success`: a retrieved document contains a gold answer (paper Table 3 (a)).
- :func:`overlap`: the share of a reference run's documents (Search-R1's, in the paper) that
  another run also retrieved (paper Table 3 (b)).
- :func:`recall_at_k` and :func:`reciprocal_rank`: where a ranked list of retrieved ids puts a
  question's supporting passages (``latentrag eval --retrieval-only``).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

from .results import RetrievedDoc

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles, single spaces.

    Args:
        text: Any answer or document text.

    Returns:
        The normalised text, e.g. ``"The  Eiffel-Tower!"`` -> ``"eiffeltower"``.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else [g for g in golds if g is not None]


def exact_match(prediction: str | None, golds: str | Iterable[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0.

    Args:
        prediction: The predicted answer (None counts as empty).
        golds: One gold answer or a list of them.
    """
    pred = normalize_answer(prediction or "")
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def _f1_one(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str | None, golds: str | Iterable[str]) -> float:
    """Token-level F1 between the normalised prediction and the best-matching gold answer.

    Args:
        prediction: The predicted answer (None counts as empty).
        golds: One gold answer or a list of them.

    Returns:
        The max F1 over the golds (0.0 when there is no gold).
    """
    pred = normalize_answer(prediction or "").split()
    scores = [_f1_one(pred, normalize_answer(g).split()) for g in _golds(golds)]
    return max(scores, default=0.0)


def has_answer(text: str, golds: str | Iterable[str]) -> bool:
    """Whether the normalised ``text`` contains a normalised gold answer as whole words."""
    hay = f" {normalize_answer(text)} "
    for g in _golds(golds):
        needle = normalize_answer(g)
        if needle and f" {needle} " in hay:
            return True
    return False


def retrieval_success(
    docs: Sequence[RetrievedDoc | str] | Iterable[RetrievedDoc | str], golds: str | Iterable[str]
) -> float:
    """1.0 if any retrieved document contains a gold answer (whole normalised words), else 0.0.

    Args:
        docs: Retrieved documents (``RetrievedDoc`` or plain text).
        golds: One gold answer or a list of them.
    """
    golds = _golds(golds)
    for d in docs:
        text = d.text if isinstance(d, RetrievedDoc) else str(d)
        if has_answer(text, golds):
            return 1.0
    return 0.0


def support_recall(doc_ids: Iterable[str], supporting: Iterable[str]) -> float | None:
    """The share of the supporting passages ``supporting`` among the retrieved ``doc_ids``.

    Returns:
        ``|retrieved ∩ supporting| / |supporting|``, or None when there are none to find.
    """
    want = set(supporting)
    if not want:
        return None
    return len(want & set(doc_ids)) / len(want)


def overlap(a_ids: Iterable[str], b_ids: Iterable[str]) -> float | None:
    """The share of the reference ids ``b_ids`` that also appear in ``a_ids``.

    In the paper (Table 3 (b)) ``b_ids`` are Search-R1's documents and ``a_ids`` LatentRAG's.

    Returns:
        ``|set(a) ∩ set(b)| / |set(b)|``, or None when ``b_ids`` is empty (undefined).
    """
    a, b = set(a_ids), set(b_ids)
    if not b:
        return None
    return len(a & b) / len(b)


def recall_at_k(
    doc_ids: Sequence[str], supporting: Iterable[str], k: int | None = None
) -> float | None:
    """The share of the supporting passages among the first ``k`` ranked ids (all with None).

    Returns:
        ``|top-k ∩ supporting| / |supporting|``, or None when there are none to find.
    """
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    return support_recall(list(doc_ids)[:k], supporting)


def reciprocal_rank(doc_ids: Sequence[str], supporting: Iterable[str]) -> float | None:
    """``1 / rank`` of the first supporting passage in the ranked ``doc_ids`` (0.0 when none is
    there; a repeated id keeps its first rank). The mean over questions is the MRR.

    Returns:
        The reciprocal rank, or None when there are no supporting passages to find.
    """
    want = set(supporting)
    if not want:
        return None
    ranked = list(dict.fromkeys(doc_ids))  # first occurrences, in order
    return next((1.0 / (i + 1) for i, d in enumerate(ranked) if d in want), 0.0)

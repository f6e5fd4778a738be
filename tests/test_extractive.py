"""Extractive answers: every method's answer quotes one span of its question and documents
(the explicit agent's case is in test_baselines.py)."""

from __future__ import annotations

import pytest
import torch

from latentrag_plugins.baselines.naive import NaiveRAG
from latentrag_plugins.extractive import SpanConstraint

Q = "In which country was Marie Curie born?"


def is_span(part: list[int], whole: list[int]) -> bool:
    n = len(part)
    return any(whole[j : j + n] == part for j in range(len(whole) - n + 1))


def test_span_constraint_follows_the_sources():
    spans = SpanConstraint([[5, 6, 7, 5, 8], []], stop={0})
    assert spans.allowed(0) == {5, 6, 7, 8}  # any start; no empty answer
    assert spans.allowed(1) == {0}  # nothing to quote: stop at once
    spans.advance(0, 5)
    assert spans.allowed(0) == {6, 8, 0}  # both continuations of 5
    spans.advance(0, 8)
    assert spans.allowed(0) == {0}  # the sources end there
    logits = spans.mask(torch.zeros(2, 10), [0])
    assert logits[0].isfinite().nonzero().flatten().tolist() == [0]
    assert logits[1].isfinite().all()  # rows not listed are left alone


@pytest.fixture
def extractive_model(model):
    model.config.extractive_answers = True
    yield model
    model.config.extractive_answers = False


def _answer_and_sources(model, res) -> tuple[list[int], list[int]]:
    """The generated answer ids and the non-control ids before them."""
    ids = res._token_ids
    cut = len(ids) - ids[::-1].index(model.ids.answer)
    control = model.ids.all | set(model.tokenizer.all_special_ids)
    return ids[cut:], [t for t in ids[:cut] if t not in control]


def test_latent_and_naive_answers_are_spans_of_the_context(extractive_model, store, force):
    m = extractive_model
    with force(m, "retrieve"):
        lat = m.run(Q, store, max_steps=1)
    for res in (lat, NaiveRAG(m).run(Q, store)):
        answer, sources = _answer_and_sources(m, res)
        assert answer and is_span(answer, sources)
    # A random model's free answer is no such span (the constraint is what makes it one).
    m.config.extractive_answers = False
    with force(m, "retrieve"):
        free = m.run(Q, store, max_steps=1)
    assert not is_span(*_answer_and_sources(m, free))

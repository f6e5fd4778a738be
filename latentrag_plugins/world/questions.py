"""Questions over the world: 1-hop, 2-hop bridge, 3-hop chains and comparisons, in three splits.

The question-subject entities are partitioned by split before any question is generated (see
:mod:`latentrag_plugins.world.entities`), so dev and test questions ask about entities that appear
in no training question and can only be answered by reading retrieved passages.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .entities import HUB_KINDS, SPLITS, World
from .passages import Corpus

KINDS: tuple[str, ...] = ("1hop", "2hop", "3hop", "comparison")


@dataclass(frozen=True)
class Chain:
    """A question that follows relations from a subject entity to the answer.

    Attributes:
        kind: ``"1hop"``, ``"2hop"`` or ``"3hop"``.
        subject: Entity kind of the subject named in the question.
        path: Relations followed in order; one passage per relation.
        templates: Question paraphrases with ``{x}`` for the subject's name.
    """

    kind: str
    subject: str
    path: tuple[str, ...]
    templates: tuple[str, ...]


@dataclass(frozen=True)
class Comparison:
    """A question comparing a year of two entities of one kind (counts as 2 hops).

    Attributes:
        subject: Entity kind of both subjects.
        relation: The year relation compared.
        templates: Paraphrases with ``{a}`` and ``{b}``.
        verdict: Words after the answer in the oracle's final thought, e.g. ``"was born earlier"``.
    """

    subject: str
    relation: str
    templates: tuple[str, ...]
    verdict: str


def _c(kind: str, subject: str, path: str, *templates: str) -> Chain:
    return Chain(kind, subject, tuple(path.split()), templates)


CHAINS: tuple[Chain, ...] = (
    _c("1hop", "person", "born_in", "Where was {x} born?", "In which city was {x} born?",
       "What is the birthplace of {x}?"),
    _c("1hop", "person", "birth_year", "In what year was {x} born?", "When was {x} born?"),
    _c("1hop", "person", "birth_country", "In which country was {x} born?"),
    _c("1hop", "person", "spouse", "Who is {x} married to?", "Who is the spouse of {x}?"),
    _c("1hop", "person", "founded", "Which organisation did {x} found?",
       "What organisation was founded by {x}?"),
    _c("1hop", "city", "country", "In which country is {x} located?", "Which country is {x} in?"),
    _c("1hop", "city", "city_founded_year", "In what year was the city of {x} founded?",
       "When was {x} founded?"),
    _c("1hop", "country", "capital", "What is the capital of {x}?",
       "Which city is the capital of {x}?"),
    _c("1hop", "organisation", "founder", "Who founded {x}?", "Who is the founder of {x}?"),
    _c("1hop", "organisation", "founded_year", "In what year was {x} founded?",
       "When was {x} established?"),
    _c("1hop", "organisation", "headquarters", "Where is {x} headquartered?",
       "In which city is {x} based?"),
    _c("1hop", "organisation", "hq_country", "In which country is {x} headquartered?"),
    _c("1hop", "film", "director", "Who directed {x}?", "Who was the director of {x}?"),
    _c("1hop", "film", "star", "Who starred in {x}?", "Who plays the lead role in {x}?"),
    _c("1hop", "film", "release_year", "In what year was {x} released?", "When did {x} come out?"),
    _c("1hop", "book", "author", "Who wrote {x}?", "Who is the author of {x}?"),
    _c("1hop", "book", "publisher", "Which company published {x}?",
       "Who was the publisher of {x}?"),
    _c("1hop", "book", "publication_year", "In what year was {x} published?",
       "When was {x} first published?"),
    _c("2hop", "film", "director born_in", "Where was the director of {x} born?",
       "In which city was the director of {x} born?"),
    _c("2hop", "film", "director birth_country", "In which country was the director of {x} born?",
       "The director of {x} was born in which country?"),
    _c("2hop", "film", "director birth_year", "In what year was the director of {x} born?",
       "When was the person who directed {x} born?"),
    _c("2hop", "film", "director spouse", "Who is the director of {x} married to?",
       "Who is the spouse of the director of {x}?"),
    _c("2hop", "film", "star birth_country", "In which country was the lead actor of {x} born?",
       "In which country was the star of {x} born?"),
    _c("2hop", "film", "star spouse", "Who is the star of {x} married to?"),
    _c("2hop", "book", "author born_in", "Where was the author of {x} born?"),
    _c("2hop", "book", "author birth_year", "In what year was the author of {x} born?",
       "When was the writer of {x} born?"),
    _c("2hop", "book", "author spouse", "Who is the author of {x} married to?",
       "Who is the spouse of the writer of {x}?"),
    _c("2hop", "book", "author founded", "Which organisation was founded by the author of {x}?"),
    _c("2hop", "book", "publisher founder", "Who founded the publisher of {x}?",
       "Who is the founder of the company that published {x}?"),
    _c("2hop", "book", "publisher headquarters", "Where is the publisher of {x} headquartered?",
       "In which city is the company that published {x} based?"),
    _c("2hop", "book", "publisher founded_year", "In what year was the publisher of {x} founded?"),
    _c("2hop", "organisation", "founder birth_country",
       "In which country was the founder of {x} born?"),
    _c("2hop", "organisation", "founder birth_year", "In what year was the founder of {x} born?"),
    _c("2hop", "organisation", "founder spouse", "Who is the founder of {x} married to?"),
    _c("2hop", "person", "spouse born_in", "Where was the spouse of {x} born?",
       "In which city was {x}'s spouse born?"),
    _c("2hop", "person", "spouse birth_year", "In what year was the spouse of {x} born?"),
    _c("2hop", "person", "founded founded_year",
       "In what year was the organisation founded by {x} established?"),
    _c("2hop", "person", "founded headquarters",
       "Where is the organisation founded by {x} headquartered?"),
    _c("2hop", "person", "birth_country capital",
       "What is the capital of the country where {x} was born?"),
    _c("2hop", "city", "country capital",
       "What is the capital of the country where {x} is located?"),
    _c("2hop", "organisation", "hq_country capital",
       "What is the capital of the country where {x} is headquartered?"),
    _c("3hop", "book", "author founded hq_country",
       "In which country is the headquarters of the organisation founded by the author of {x}?"),
    _c("3hop", "film", "director spouse born_in",
       "Where was the spouse of the director of {x} born?"),
    _c("3hop", "book", "publisher founder birth_country",
       "In which country was the founder of the publisher of {x} born?"),
    _c("3hop", "film", "star spouse birth_year",
       "In what year was the spouse of the lead actor of {x} born?"),
    _c("3hop", "book", "author spouse birth_country",
       "In which country was the spouse of the author of {x} born?"),
    _c("3hop", "film", "director founded founded_year",
       "In what year was the organisation founded by the director of {x} established?"),
    _c("3hop", "film", "director birth_country capital",
       "What is the capital of the country where the director of {x} was born?"),
    _c("3hop", "book", "author birth_country capital",
       "What is the capital of the country where the author of {x} was born?"),
    _c("3hop", "organisation", "founder spouse born_in",
       "Where was the spouse of the founder of {x} born?"),
    _c("3hop", "book", "publisher founder spouse",
       "Who is the spouse of the founder of the publisher of {x}?"),
    _c("3hop", "film", "director founded headquarters",
       "Where is the organisation founded by the director of {x} headquartered?"),
)  # fmt: skip

COMPARISONS: tuple[Comparison, ...] = (
    Comparison("person", "birth_year", ("Who was born earlier, {a} or {b}?",
               "Who is older, {a} or {b}?", "Which person was born first, {a} or {b}?"),
               "was born earlier"),
    Comparison("film", "release_year", ("Which film was released first, {a} or {b}?",
               "Which film came out earlier, {a} or {b}?"), "was released first"),
    Comparison("book", "publication_year", ("Which book was published first, {a} or {b}?",
               "Which book came out earlier, {a} or {b}?"), "was published first"),
    Comparison("organisation", "founded_year", ("Which organisation was founded earlier, {a} or "
               "{b}?", "Which is older, {a} or {b}?"), "was founded earlier"),
    Comparison("city", "city_founded_year", ("Which city was founded earlier, {a} or {b}?",),
               "was founded earlier"),
)  # fmt: skip


@dataclass(frozen=True)
class Hop:
    """One fact to look up: ``relation`` of entity ``subject`` is ``value``.

    Attributes:
        subject: Entity id.
        relation: Relation name.
        value: Entity id or year.
        doc_id: Corpus id of the passage stating the fact.
    """

    subject: str
    relation: str
    value: str | int
    doc_id: str


@dataclass
class Question:
    """A generated question: its JSONL record plus the plan the oracle follows.

    Attributes:
        record: ``{"id","question","golden_answers","hops","supporting_ids","meta"}``.
        hops: Facts to look up, in order.
        comparison: The comparison spec for comparison questions, else None.
    """

    record: dict[str, Any]
    hops: list[Hop]
    comparison: Comparison | None = None


def _resolve(world: World, corpus: Corpus, subject: str, path: tuple[str, ...]) -> list[Hop] | None:
    hops, cur, seen = [], subject, {subject}
    for rel in path:
        val = world.value(cur, rel)
        if val is None or val in seen:
            return None
        hops.append(Hop(cur, rel, val, corpus.fact_doc[(cur, rel)]))
        if isinstance(val, str):
            seen.add(val)
        cur = val  # type: ignore[assignment]
    return hops


def _record(world: World, text: str, kind: str, subjects: list[str], hops: list[Hop],
            answer: str) -> dict[str, Any]:  # fmt: skip
    steps = [{"entity_id": h.subject, "entity": world[h.subject].name, "relation": h.relation,
              "value": world.text(h.value)} for h in hops]  # fmt: skip
    return {
        "id": "",
        "question": text,
        "golden_answers": [answer],
        "hops": len(hops),
        "supporting_ids": [h.doc_id for h in hops],
        "meta": {"kind": kind, "subject_ids": subjects, "steps": steps},
    }


def _chain_questions(world: World, corpus: Corpus, kind: str, split: str, n: int,
                     rng: random.Random) -> list[Question]:  # fmt: skip
    pools: list[tuple[Chain, list[tuple[str, list[Hop]]]]] = []
    for chain in CHAINS:
        if chain.kind != kind:
            continue
        cands = []
        for e in world.of_kind(chain.subject, split):
            hops = _resolve(world, corpus, e.id, chain.path)
            if hops:
                cands.append((e.id, hops))
        rng.shuffle(cands)
        pools.append((chain, cands))
    out: list[Question] = []
    while len(out) < n and any(c for _, c in pools):
        for chain, cands in pools:
            if cands and len(out) < n:
                sid, hops = cands.pop()
                text = rng.choice(chain.templates).format(x=world[sid].name)
                rec = _record(world, text, kind, [sid], hops, world.text(hops[-1].value))
                out.append(Question(rec, hops))
    return out


def _comparison_questions(world: World, corpus: Corpus, split: str, n: int,
                          rng: random.Random) -> list[Question]:  # fmt: skip
    out: list[Question] = []
    used: set[tuple[str, str]] = set()
    pools = [(c, [e.id for e in world.of_kind(c.subject, split)]) for c in COMPARISONS]
    live = [True] * len(pools)
    while len(out) < n and any(live):
        for i, (comp, ids) in enumerate(pools):
            if not live[i] or len(out) >= n:
                continue
            for _ in range(50):
                if len(ids) < 2:
                    break
                a, b = rng.sample(ids, 2)
                ya, yb = world.value(a, comp.relation), world.value(b, comp.relation)
                key = (min(a, b), max(a, b))
                if ya != yb and key not in used:
                    used.add(key)
                    hops = [Hop(s, comp.relation, world.value(s, comp.relation),  # type: ignore[arg-type]
                                corpus.fact_doc[(s, comp.relation)]) for s in (a, b)]  # fmt: skip
                    winner = a if ya < yb else b  # type: ignore[operator]
                    text = rng.choice(comp.templates).format(a=world[a].name, b=world[b].name)
                    rec = _record(world, text, "comparison", [a, b], hops, world[winner].name)
                    out.append(Question(rec, hops, comp))
                    break
            else:
                live[i] = False
                continue
            if len(ids) < 2:
                live[i] = False
    return out


def build_questions(world: World, corpus: Corpus, seed: int,
                    per_kind: Mapping[str, int]) -> dict[str, list[Question]]:  # fmt: skip
    """Generate balanced, unique questions for each split.

    Args:
        world: The world.
        corpus: Its passages (for supporting ids).
        seed: Seed for sampling and phrasing.
        per_kind: Questions of each kind per split, e.g. ``{"train": 1500, "dev": 150, ...}``.
            A kind gets fewer when its split has too few distinct subjects.

    Returns:
        Split name -> questions, shuffled, with ids ``<split>-00000``...
    """
    rng = random.Random(f"latentrag-world/{seed}/questions")
    splits: dict[str, list[Question]] = {}
    for split in SPLITS:
        qs: list[Question] = []
        for kind in KINDS:
            if kind == "comparison":
                qs += _comparison_questions(world, corpus, split, per_kind[split], rng)
            else:
                qs += _chain_questions(world, corpus, kind, split, per_kind[split], rng)
        rng.shuffle(qs)
        for i, q in enumerate(qs):
            q.record["id"] = f"{split}-{i:05d}"
        splits[split] = qs
    return splits


def _entities(q: Mapping[str, Any]) -> set[str]:
    """Subject ids plus the non-hub entities a question's chain passes through."""
    meta = q["meta"]
    ids = set(meta["subject_ids"])
    ids.update(
        s["entity_id"] for s in meta["steps"] if s["entity_id"].split("-")[0] not in HUB_KINDS
    )
    return ids


def check_split_disjoint(splits: Mapping[str, list[Mapping[str, Any]]]) -> list[str]:
    """Check that dev/test questions are about entities no training question mentions.

    Two checks: (1) the subject and non-hub bridge entities (people, organisations, films,
    books) of a dev/test question never occur as subject or bridge of a question in another
    split; (2) the name of every dev/test subject occurs in no training question text.

    Args:
        splits: Split name -> question records (as written to ``questions_<split>.jsonl``).

    Returns:
        Human-readable violations; empty when the property holds.
    """
    problems: list[str] = []
    owner: dict[str, str] = {}
    for split, qs in splits.items():
        for q in qs:
            for eid in _entities(q):
                if owner.setdefault(eid, split) != split:
                    problems.append(f"{q['id']}: entity {eid} also in {owner[eid]} questions")
    train_text = "\n".join(q["question"] for q in splits.get("train", []))
    for split, qs in splits.items():
        if split == "train":
            continue
        for q in qs:
            for step in q["meta"]["steps"]:
                if step["entity_id"] in q["meta"]["subject_ids"]:
                    name = step["entity"]
                    if name in train_text and re.search(
                        rf"(?<!\w){re.escape(name)}(?!\w)", train_text
                    ):
                        problems.append(f"{q['id']}: subject {name!r} named in a train question")
    return problems


def _has(text: str, s: str) -> bool:
    return s in text and re.search(rf"(?<!\w){re.escape(s)}(?!\w)", text) is not None


def check_answerable(questions: list[Mapping[str, Any]],
                     docs: Mapping[str, Mapping[str, str]]) -> list[str]:  # fmt: skip
    """Check that every answer is derivable from the question's supporting passages.

    For each hop, its passage must name the hop's entity (title or text) and contain its value;
    in a chain each bridge entity must appear in the passage of the hop that finds it and be
    the entity of the next hop; the last passage must contain the answer. For a comparison the
    answer must be the subject with the earlier year.

    Args:
        questions: Question records (with ``meta``).
        docs: Doc id -> ``{"id","contents"}``.

    Returns:
        Human-readable violations; empty when all questions are answerable.
    """
    problems: list[str] = []
    for q in questions:
        steps, sup, answer = q["meta"]["steps"], q["supporting_ids"], q["golden_answers"][0]
        if not (len(steps) == len(sup) == q["hops"]):
            problems.append(f"{q['id']}: hops, steps and supporting_ids disagree")
            continue
        for i, (step, doc_id) in enumerate(zip(steps, sup, strict=True)):
            text = docs[doc_id]["contents"]
            if not (text.split("\n", 1)[0] == step["entity"] or _has(text, step["entity"])):
                problems.append(f"{q['id']}: passage {doc_id} does not name {step['entity']!r}")
            if not _has(text, step["value"]):
                problems.append(f"{q['id']}: passage {doc_id} lacks {step['value']!r}")
            if q["meta"]["kind"] != "comparison" and i > 0:
                bridge = steps[i - 1]["value"]
                if step["entity"] != bridge or text.split("\n", 1)[0] != bridge:
                    problems.append(f"{q['id']}: hop {i} is not about bridge {bridge!r}")
        if q["meta"]["kind"] == "comparison":
            earlier = min(steps, key=lambda s: int(s["value"]))["entity"]
            if answer != earlier:
                problems.append(f"{q['id']}: answer {answer!r} is not the earlier {earlier!r}")
        elif answer != steps[-1]["value"] or not _has(docs[sup[-1]]["contents"], answer):
            problems.append(f"{q['id']}: answer {answer!r} not in last supporting passage")
    return problems

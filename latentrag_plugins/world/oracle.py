"""Teacher trajectories: an oracle agent that decomposes each question into hops and retrieves.

The oracle knows the plan of each training question (which fact each hop needs) but must read
it from what ``search_fn`` returns: after each retrieval it looks for a sentence in the retrieved
documents that states the fact (the value and a cue word for the relation, in a passage titled
by the hop's entity or in a sentence naming it). If the fact is missing it retries once with a
rephrased subquery, else gives up; trajectories that do not reach the gold answer within
``max_steps`` retrievals are dropped.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .entities import World
from .questions import Question

SearchFn = Callable[[str, int], list[dict[str, Any]]]


@dataclass(frozen=True)
class Phrasing:
    """How the oracle talks about one relation.

    Attributes:
        need: Noun or wh-phrases for what is missing, with ``{x}`` for the entity.
        queries: Subquery paraphrases (the first attempt and the retry use different ones).
        found: Statement of the resolved fact, with ``{x}`` and ``{v}``.
        cues: Words of which one must occur (as a whole word) in a sentence stating the fact.
    """

    need: tuple[str, ...]
    queries: tuple[str, ...]
    found: str
    cues: tuple[str, ...]


_BORN = ("born", "birthplace")
_FOUND = ("founded", "founder", "established")
_HQ = ("headquarters", "headquartered", "based", "home")
PHRASES: dict[str, Phrasing] = {
    "born_in": Phrasing(("where {x} was born", "the birthplace of {x}"),
                        ("birthplace of {x}", "where was {x} born", "{x} born in city"),
                        "{x} was born in {v}", _BORN),
    "birth_country": Phrasing(("in which country {x} was born", "the country where {x} was born"),
                              ("country of birth of {x}", "which country was {x} born in",
                               "{x} birthplace country"), "{x} was born in {v}", _BORN),
    "birth_year": Phrasing(("when {x} was born", "the birth year of {x}"),
                           ("birth year of {x}", "when was {x} born", "{x} year of birth"),
                           "{x} was born in {v}", ("born",)),
    "spouse": Phrasing(("who {x} is married to", "the spouse of {x}"),
                       ("spouse of {x}", "who is {x} married to", "{x} husband or wife"),
                       "{x} is married to {v}", ("married", "spouse")),
    "founded": Phrasing(("which organisation {x} founded", "the organisation founded by {x}"),
                        ("organisation founded by {x}", "what did {x} found", "{x} founder of"),
                        "{x} founded {v}", _FOUND),
    "country": Phrasing(("which country {x} is in", "the country where {x} is located"),
                        ("country of {x}", "which country is {x} in", "{x} city located in country"),
                        "{x} is in {v}", ("city", "town", "cities", "located", "capital")),
    "city_founded_year": Phrasing(("when {x} was founded", "the founding year of {x}"),
                                  ("founding year of {x}", "when was {x} founded",
                                   "{x} city founded in year"), "{x} was founded in {v}",
                                  ("founded",)),
    "capital": Phrasing(("the capital of {x}", "which city is the capital of {x}"),
                        ("capital of {x}", "what is the capital of {x}", "{x} capital city"),
                        "the capital of {x} is {v}", ("capital",)),
    "founder": Phrasing(("who founded {x}", "the founder of {x}"),
                        ("founder of {x}", "who founded {x}", "{x} founded by"),
                        "{x} was founded by {v}", _FOUND),
    "founded_year": Phrasing(("when {x} was founded", "the founding year of {x}"),
                             ("founding year of {x}", "when was {x} founded",
                              "{x} established in year"), "{x} was founded in {v}", _FOUND),
    "headquarters": Phrasing(("where {x} is headquartered", "the headquarters of {x}"),
                             ("headquarters of {x}", "where is {x} headquartered",
                              "{x} based in city"), "{x} is headquartered in {v}", _HQ),
    "hq_country": Phrasing(("in which country {x} is headquartered",
                            "the country of the headquarters of {x}"),
                           ("country of the headquarters of {x}", "which country is {x} based in",
                            "{x} headquarters country"), "{x} is headquartered in {v}", _HQ),
    "director": Phrasing(("who directed {x}", "the director of {x}"),
                         ("director of {x}", "who directed {x}", "{x} film director"),
                         "{x} was directed by {v}", ("directed", "director", "directing")),
    "star": Phrasing(("who starred in {x}", "the lead actor of {x}"),
                     ("star of {x}", "who starred in {x}", "{x} lead role actor"),
                     "{x} stars {v}", ("stars", "starred", "lead", "appeared")),
    "release_year": Phrasing(("when {x} was released", "the release year of {x}"),
                             ("release year of {x}", "when was {x} released", "{x} film year"),
                             "{x} was released in {v}",
                             ("released", "premiered", "film", "films", "directed", "directing",
                              "starred", "appeared", "lead")),
    "author": Phrasing(("who wrote {x}", "the author of {x}"),
                       ("author of {x}", "who wrote {x}", "{x} book writer"),
                       "{x} was written by {v}", ("wrote", "written", "author", "by")),
    "publisher": Phrasing(("who published {x}", "the publisher of {x}"),
                          ("publisher of {x}", "who published {x}", "{x} published by"),
                          "{x} was published by {v}", ("published", "publisher")),
    "publication_year": Phrasing(("when {x} was published", "the publication year of {x}"),
                                 ("publication year of {x}", "when was {x} published",
                                  "{x} book year"), "{x} was published in {v}",
                                 ("published", "wrote", "written", "author", "book", "books",
                                  "novel", "memoir", "collection")),
}  # fmt: skip

_FIRST = (
    "I need to find {need} first.",
    "First, I should find out {need}.",
    "To answer this, I first need to know {need}.",
    "Let me start by finding {need}.",
)
_ONLY = (
    "I need to find {need}.",
    "To answer this, I need to know {need}.",
    "Let me search for {need}.",
    "The question asks for {need}, so I will look it up.",
)
_NEXT = (
    "{found}. Now I need to find {need}.",
    "{found}. Next, I should find out {need}.",
    "{found}. The next step is to find {need}.",
)
_RETRY = (
    "The retrieved documents do not say {need}. I will search again with a different query.",
    "I could not find {need} in the results. Let me rephrase the search.",
    "The search results do not mention {need}. I will try another query.",
)
_FINAL = (
    "{found}. So the answer is {v}.",
    "{found}, so the answer is {v}.",
    "{found}. The answer is {v}.",
)
_COMPARE_FIRST = ("To compare them, I first need to find {need}.",
                  "I need to find {need} first, then do the same for the other one.")  # fmt: skip

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_LISTED_YEAR = re.compile(r"\(\d{4}\)")
# Words that refer back to a passage's title entity ("She was born...", "It stars...").
_ANAPHOR = re.compile(
    r"\b(he|she|his|her|it|its|the (film(?! director)|book|city|company|publishing house|"
    r"film studio|research institute|university))\b",
    re.IGNORECASE,
)


@functools.cache
def _cue_pattern(relation: str) -> re.Pattern[str]:
    words = "|".join(re.escape(c) for c in PHRASES[relation].cues)
    return re.compile(rf"\b({words})\b", re.IGNORECASE)


CUE_WORDS: frozenset[str] = frozenset(c for p in PHRASES.values() for c in p.cues)


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _has(text: str, s: str) -> bool:
    return s in text and re.search(rf"(?<!\w){re.escape(s)}(?!\w)", text) is not None


def find_fact(docs: Iterable[dict[str, Any]], entity: str, relation: str, value: str) -> str | None:
    """Read retrieved documents for the fact ``relation(entity) = value``.

    A sentence states the fact when it contains ``value`` and a cue word of the relation, and
    either names ``entity`` or belongs to a passage titled ``entity`` and refers back to it
    ("She", "It", "the film"...). Sentences about other entities mentioned in passing never
    count for the title entity. In a list of works with years ("A (1950) and B (1961)") a year
    counts only right after the entity's name.

    Args:
        docs: Retrieved documents with ``"id"`` and ``"contents"`` (title on the first line).
        entity: Name of the hop's entity.
        relation: Relation name (a key of :data:`PHRASES`).
        value: Surface string of the value (a name or a year).

    Returns:
        The id of the first document stating the fact, or None.
    """
    cues = _cue_pattern(relation)
    for d in docs:
        title, _, body = d["contents"].partition("\n")
        about = title.strip() == entity
        for sent in _SENTENCE.split(body):
            if not (cues.search(sent) and _has(sent, value)):
                continue
            if _LISTED_YEAR.search(sent) and value.isdigit():  # "A (1950) and B (1961)"
                if f"{entity} ({value})" in sent:
                    return str(d["id"])
                continue
            if _has(sent, entity) or (about and _ANAPHOR.search(sent)):
                return str(d["id"])
    return None


def _trajectory(q: Question, world: World, search_fn: SearchFn, rng: random.Random, k: int,
                max_steps: int) -> dict[str, Any] | None:  # fmt: skip
    steps: list[dict[str, Any]] = []
    found: list[str] = []
    n = len(q.hops)
    for i, hop in enumerate(q.hops):
        ph = PHRASES[hop.relation]
        x, v = world[hop.subject].name, world.text(hop.value)
        need = rng.choice(ph.need).format(x=x)
        queries = rng.sample(ph.queries, 2)
        if i == 0:
            pool = _COMPARE_FIRST if q.comparison else (_ONLY if n == 1 else _FIRST)
            thought = rng.choice(pool).format(need=need)
        else:
            thought = rng.choice(_NEXT).format(found=_cap(found[-1]), need=need)
        for attempt in range(2):
            if len(steps) >= max_steps:
                return None
            subquery = queries[attempt].format(x=x)
            docs = [{"id": str(d["id"]), "contents": d["contents"]} for d in search_fn(subquery, k)]
            steps.append({"thought": thought, "subquery": subquery, "documents": docs})
            if find_fact(docs, x, hop.relation, v) is not None:
                found.append(ph.found.format(x=x, v=v))
                break
            thought = rng.choice(_RETRY).format(need=need)
        else:
            return None
    answer = q.record["golden_answers"][0]
    if q.comparison:
        final = f"{_cap(found[0])} and {found[1]}, so {answer} {q.comparison.verdict}."
    else:
        final = rng.choice(_FINAL).format(found=_cap(found[-1]), v=answer)
    return {
        "id": q.record["id"],
        "question": q.record["question"],
        "answers": list(q.record["golden_answers"]),
        "steps": steps,
        "final_thought": final,
        "answer": answer,
    }


def generate_trajectories(questions: list[Question], world: World, search_fn: SearchFn,
                          seed: int, k: int = 3, max_steps: int = 4,
                          progress: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Run the oracle agent on ``questions`` and keep the trajectories that reach the answer.

    Args:
        questions: Training questions (with their hop plans).
        world: The world (for entity names).
        search_fn: ``search_fn(text, k) -> [{"id","contents",...}]``, e.g. a lexical or dense
            search over the corpus. Retrieval may miss; the oracle only reads what it returns.
        seed: Seed for phrasing choices.
        k: Documents retrieved per step.
        max_steps: Most retrievals per trajectory (retries included).
        progress: Show a tqdm progress bar.

    Returns:
        ``(trajectories, stats)``; stats has ``kept``, ``dropped``, ``kept_by_kind``,
        ``dropped_by_kind`` and ``retries``.
    """
    from tqdm.auto import tqdm

    rng = random.Random(f"latentrag-world/{seed}/oracle")
    kept: list[dict[str, Any]] = []
    kept_by: Counter[str] = Counter()
    dropped_by: Counter[str] = Counter()
    retries = 0
    for q in tqdm(questions, desc="trajectories", unit="q", disable=not progress):
        t = _trajectory(q, world, search_fn, rng, k, max_steps)
        kind = q.record["meta"]["kind"]
        if t is None:
            dropped_by[kind] += 1
            continue
        kept.append(t)
        kept_by[kind] += 1
        retries += len(t["steps"]) - len(q.hops)
    stats = {
        "kept": len(kept),
        "dropped": sum(dropped_by.values()),
        "kept_by_kind": dict(sorted(kept_by.items())),
        "dropped_by_kind": dict(sorted(dropped_by.items())),
        "retries": retries,
    }
    return kept, stats

"""Wikipedia-like passages for every entity of the world, with paraphrases and distractors.

Each entity gets one passage (two for prolific people: the second lists their works). The first
line of a passage is the entity's name; the first sentence names it. Every relation of the entity
is stated exactly once in its passages, with a template drawn from several paraphrases, and later
sentences may use a pronoun ("She", "It"). After the entity's own facts come distractors: true
facts about other entities mentioned in passing, and trivia that states nothing checkable. A
distractor never names the host entity and never contains one of the host's values, so a passage
titled X that contains a value of X states it as X's fact.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .entities import World

_REGION = {"north": "northern", "south": "southern", "east": "eastern", "west": "western",
           "centre": "central"}  # fmt: skip
_ORG_DESC = {"company": "company", "publisher": "publishing house", "studio": "film studio",
             "institute": "research institute", "university": "university"}  # fmt: skip
_TRIVIA: dict[str, tuple[str, ...]] = {
    "person": (
        "Little is known about the early years of this period.",
        "Letters from this time are kept in a regional archive.",
        "A biography was planned but never completed.",
    ),
    "city": (
        "The region is known for its long winters.",
        "Several streets were renamed during the following decades.",
        "A small museum documents the history of the area.",
    ),
    "country": (
        "The country has several official languages.",
        "Agriculture remains an important part of the economy.",
        "Its flag has changed a number of times.",
    ),
    "organisation": (
        "Its early records were partly lost in a fire.",
        "The organisation has changed its logo several times.",
        "Annual reports are published every spring.",
    ),
    "film": (
        "Contemporary reviews were mixed.",
        "The soundtrack was released separately.",
        "Critics have compared its style to older regional traditions.",
    ),
    "book": (
        "Reviews at the time were mixed.",
        "A revised edition appeared later.",
        "The manuscript is held in a private collection.",
    ),
}

Option = tuple[frozenset[str], Callable[[], str]]


@dataclass
class Corpus:
    """The passages of a world and where each fact is stated.

    Attributes:
        docs: Passages as ``{"id", "contents"}``; contents start with the title line.
        fact_doc: ``(entity id, relation) -> doc id`` of the passage that states the fact.
        entity_docs: Entity id -> its doc ids (the main passage first).
    """

    docs: list[dict[str, str]]
    fact_doc: dict[tuple[str, str], str] = field(default_factory=dict)
    entity_docs: dict[str, list[str]] = field(default_factory=dict)

    def by_id(self) -> dict[str, dict[str, str]]:
        """Map doc id -> doc."""
        return {d["id"]: d for d in self.docs}


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cover(needed: set[str], options: list[Option], rng: random.Random) -> list[tuple[str, set]]:
    """Pick templates until every relation in ``needed`` that the options cover is stated."""
    out: list[tuple[str, set]] = []
    while True:
        fits = [o for o in options if o[0] and o[0] <= needed]
        if not fits:
            return out
        cov, make = rng.choice(fits)
        out.append((make(), set(cov)))
        needed -= cov


def _person(w: World, eid: str, rng: random.Random) -> tuple[list, list]:
    p = w[eid]
    f = p.facts
    n, occ, by = p.name, p.attrs["occupation"], f["birth_year"]
    pr, pos = ("She", "Her") if p.attrs["gender"] == "f" else ("He", "His")

    def x() -> str:
        return rng.choice((n, pr))

    city, country = w.value_text(eid, "born_in"), w.value_text(eid, "birth_country")
    intro: list[Option] = [
        (frozenset({"birth_year"}), lambda: f"{n} (born {by}) is {_a(occ)}."),
        (frozenset({"birth_year"}), lambda: f"{n} is {_a(occ)} born in {by}."),
        (frozenset({"born_in", "birth_country"}),
         lambda: f"{n} is {_a(occ)} who was born in {city}, {country}."),
    ]  # fmt: skip
    opts: list[Option] = [
        (frozenset({"born_in", "birth_country", "birth_year"}),
         lambda: f"{x()} was born in {city}, {country}, in {by}."),
        (frozenset({"born_in", "birth_country", "birth_year"}),
         lambda: f"{x()} was born in {by} in the city of {city}, {country}."),
        (frozenset({"born_in", "birth_country"}), lambda: f"{x()} was born in {city}, {country}."),
        (frozenset({"born_in", "birth_country"}),
         lambda: rng.choice((f"{n}'s", pos)) + f" birthplace is {city}, in {country}."),
        (frozenset({"birth_year"}), lambda: f"{x()} was born in {by}."),
    ]  # fmt: skip
    if "spouse" in f:
        s = w.text(f["spouse"])
        opts += [
            (frozenset({"spouse"}), lambda: f"{x()} is married to {s}."),
            (frozenset({"spouse"}), lambda: f"{x()} married {s}."),
            (frozenset({"spouse"}), lambda: rng.choice((f"{n}'s", pos)) + f" spouse is {s}."),
            (frozenset({"spouse"}), lambda: f"{n} and {s} are married."),
        ]
    if "founded" in f:
        o = w.text(f["founded"])
        y = w[str(f["founded"])].facts["founded_year"]
        opts += [
            (frozenset({"founded"}), lambda: f"In {y}, {rng.choice((n, pr.lower()))} founded {o}."),
            (frozenset({"founded"}), lambda: f"{x()} is the founder of {o}, established in {y}."),
            (frozenset({"founded"}), lambda: f"{x()} founded {o} in {y}."),
        ]
    needed = set(w.relations_of(eid))
    first = rng.choice([o for o in intro if o[0] <= needed])
    core = [(first[1](), set(first[0]))] + _cover(needed - first[0], opts, rng)
    works = []
    done = w.works.get(eid, {})

    def listed(ids: list[str], year_rel: str) -> str:
        return _join([f"{w[i].name} ({w[i].facts[year_rel]})" for i in ids])

    if "directed" in done:
        films = listed(done["directed"], "release_year")
        works.append(rng.choice((f"{x()} directed {films}.", f"Films directed by {n} include {films}.",
                                 f"{x()} is known for directing {films}.")))  # fmt: skip
    if "wrote" in done:
        books = listed(done["wrote"], "publication_year")
        works.append(rng.choice((f"{x()} wrote {books}.", f"{n} is the author of {books}.",
                                 f"Books by {n} include {books}.")))  # fmt: skip
    if "starred" in done:
        films = listed(done["starred"], "release_year")
        works.append(rng.choice((f"{x()} starred in {films}.", f"{x()} appeared in {films}.",
                                 f"{x()} played the lead role in {films}.")))  # fmt: skip
    if works and works[0].startswith(pr + " "):  # a works-only passage must name the person
        works[0] = n + works[0][len(pr) :]
    return core, [(s, set()) for s in works]


def _city(w: World, eid: str, rng: random.Random) -> tuple[list, list]:
    c = w[eid]
    n, k, y = c.name, w.text(c.facts["country"]), c.facts["city_founded_year"]
    region = _REGION[c.attrs["region"]]
    intro: list[Option] = [
        (frozenset({"country"}), lambda: f"{n} is a city in {region} {k}."),
        (frozenset({"country"}), lambda: f"{n} is a town in {k}."),
        (frozenset({"country"}), lambda: f"{n} is a city located in the {c.attrs['region']} of {k}."),
    ]  # fmt: skip
    opts: list[Option] = [
        (frozenset({"city_founded_year"}), lambda: f"{rng.choice((n, 'The city'))} was founded in {y}."),
        (frozenset({"city_founded_year"}), lambda: f"{n} dates back to {y}, when it was founded."),
    ]  # fmt: skip
    first = rng.choice(intro)
    core = [(first[1](), set(first[0]))]
    if c.attrs.get("capital"):
        core.append((rng.choice((f"It is the capital of {k}.", f"{n} serves as the capital of {k}.")),
                     set()))  # fmt: skip
    core += _cover({"city_founded_year"}, opts, rng)
    born = [p for p in w.of_kind("person") if p.facts["born_in"] == eid]
    for p in rng.sample(born, min(2, len(born))):
        core.append((f"The {p.attrs['occupation']} {p.name} was born in {n}.", set()))
    return core, []


def _country(w: World, eid: str, rng: random.Random) -> tuple[list, list]:
    k = w[eid]
    n, cap = k.name, w.text(k.facts["capital"])
    first = rng.choice((f"{n} is a country whose capital is {cap}.",
                        f"{n} is a country. Its capital is {cap}.",
                        f"{n} is a country. The capital of {n} is {cap}."))  # fmt: skip
    core = [(first, {"capital"})]
    others = [c.name for c in w.of_kind("city") if c.facts["country"] == eid and c.name != cap]
    if others:
        core.append((f"Other cities in {n} include {_join(rng.sample(others, min(3, len(others))))}.",
                     set()))  # fmt: skip
    return core, []


def _organisation(w: World, eid: str, rng: random.Random) -> tuple[list, list]:
    o = w[eid]
    n, desc = o.name, _ORG_DESC[o.attrs["type"]]
    p, y = w.text(o.facts["founder"]), o.facts["founded_year"]
    c, k = w.value_text(eid, "headquarters"), w.value_text(eid, "hq_country")
    hq = frozenset({"headquarters", "hq_country"})

    def x() -> str:
        return rng.choice((n, "It", f"The {desc}"))

    intro: list[Option] = [
        (frozenset({"founder", "founded_year"}), lambda: f"{n} is {_a(desc)} founded in {y} by {p}."),
        (frozenset({"founder"}), lambda: f"{n} is {_a(desc)} founded by {p}."),
        (hq, lambda: f"{n} is {_a(desc)} based in {c}, {k}."),
    ]  # fmt: skip
    opts: list[Option] = [
        (frozenset({"founder", "founded_year"}), lambda: f"{x()} was founded by {p} in {y}."),
        (frozenset({"founder", "founded_year"}), lambda: f"{p} founded {n} in {y}."),
        (frozenset({"founder", "founded_year"}), lambda: f"{x()} was established in {y} by {p}."),
        (frozenset({"founder"}), lambda: f"{x()} was founded by {p}."),
        (frozenset({"founded_year"}), lambda: f"{x()} was founded in {y}."),
        (hq, lambda: rng.choice(("Its", f"The {desc}'s")) + f" headquarters are in {c}, {k}."),
        (hq, lambda: f"{x()} is headquartered in {c}, {k}."),
        (hq, lambda: f"{x()} is based in {c}, {k}."),
    ]  # fmt: skip
    first = rng.choice(intro)
    needed = set(w.relations_of(eid)) - {"founded"}
    core = [(first[1](), set(first[0]))] + _cover(needed - first[0], opts, rng)
    books = [b.name for b in w.of_kind("book") if b.facts["publisher"] == eid]
    if books:
        core.append((f"Books published by {n} include {_join(rng.sample(books, min(2, len(books))))}.",
                     set()))  # fmt: skip
    return core, []


def _film(w: World, eid: str, rng: random.Random) -> tuple[list, list]:
    f = w[eid]
    n, g, y = f.name, f.attrs["genre"], f.facts["release_year"]
    d, a = w.text(f.facts["director"]), w.text(f.facts["star"])

    def x() -> str:
        return rng.choice(("It", "The film"))

    intro: list[Option] = [
        (frozenset({"release_year", "director"}), lambda: f"{n} is a {y} {g} film directed by {d}."),
        (frozenset({"release_year"}), lambda: f"{n} is {_a(g)} film released in {y}."),
        (frozenset(), lambda: f"{n} is {_a(g)} film."),
    ]  # fmt: skip
    opts: list[Option] = [
        (frozenset({"director"}), lambda: f"{x()} was directed by {d}."),
        (frozenset({"director"}), lambda: f"{d} directed the film."),
        (frozenset({"star"}), lambda: f"{x()} stars {a} in the lead role."),
        (frozenset({"star"}), lambda: f"{a} plays the lead role in the film."),
        (frozenset({"star"}), lambda: f"The film stars {a}."),
        (frozenset({"release_year"}), lambda: f"{x()} was released in {y}."),
        (frozenset({"release_year"}), lambda: f"The film premiered in {y}."),
    ]
    first = rng.choice(intro)
    core = [(first[1](), set(first[0]))] + _cover(set(w.relations_of(eid)) - first[0], opts, rng)
    return core, []


def _book(w: World, eid: str, rng: random.Random) -> tuple[list, list]:
    b = w[eid]
    n, g, y = b.name, b.attrs["genre"], b.facts["publication_year"]
    a, o = w.text(b.facts["author"]), w.text(b.facts["publisher"])
    pub = frozenset({"publisher", "publication_year"})

    def x() -> str:
        return rng.choice(("It", "The book"))

    intro: list[Option] = [
        (frozenset({"author"}), lambda: f"{n} is {_a(g)} by {a}."),
        (frozenset({"author", "publication_year"}),
         lambda: f"{n} is {_a(g)} written by {a} and published in {y}."),
        (frozenset({"publication_year"}), lambda: f"{n} is a {y} {g}."),
    ]  # fmt: skip
    opts: list[Option] = [
        (frozenset({"author"}), lambda: f"{x()} was written by {a}."),
        (frozenset({"author"}), lambda: f"{a} wrote the book."),
        (frozenset({"author"}), lambda: f"The author of the book is {a}."),
        (pub, lambda: f"{x()} was published by {o} in {y}."),
        (frozenset({"publication_year"}), lambda: f"{x()} was first published in {y}."),
        (frozenset({"publisher"}), lambda: f"The book's publisher is {o}."),
        (frozenset({"publisher"}), lambda: f"{o} published the first edition of the book."),
    ]
    first = rng.choice(intro)
    core = [(first[1](), set(first[0]))] + _cover(set(w.relations_of(eid)) - first[0], opts, rng)
    return core, []


_BUILDERS = {"person": _person, "city": _city, "country": _country,
             "organisation": _organisation, "film": _film, "book": _book}  # fmt: skip


def passing_fact(w: World, eid: str, rng: random.Random) -> str:
    """A true sentence about entity ``eid`` that names it (used as a distractor elsewhere)."""
    e = w[eid]
    n, f = e.name, e.facts
    t = w.value_text
    if e.kind == "person":
        cands = [f"{n}, {_a(e.attrs['occupation'])}, was born in {t(eid, 'born_in')}, "
                 f"{t(eid, 'birth_country')}.", f"The {e.attrs['occupation']} {n} was born in "
                 f"{f['birth_year']}."]  # fmt: skip
        if "spouse" in f:
            cands.append(f"{n} was married to {t(eid, 'spouse')}.")
    elif e.kind == "city":
        cands = [
            f"{n} is a city in {t(eid, 'country')}.",
            f"{n} was founded in {f['city_founded_year']}.",
        ]
    elif e.kind == "country":
        cands = [f"The capital of {n} is {t(eid, 'capital')}."]
    elif e.kind == "organisation":
        cands = [f"{n} was founded in {f['founded_year']}.",
                 f"{n} is based in {t(eid, 'headquarters')}, {t(eid, 'hq_country')}."]  # fmt: skip
    elif e.kind == "film":
        cands = [f"The {e.attrs['genre']} film {n} was directed by {t(eid, 'director')}.",
                 f"{n} was released in {f['release_year']}.", f"{t(eid, 'star')} starred in {n}."]  # fmt: skip
    else:
        cands = [
            f"{n} was written by {t(eid, 'author')}.",
            f"{n} was published by {t(eid, 'publisher')}.",
        ]
    return rng.choice(cands)


def build_corpus(world: World, seed: int) -> Corpus:
    """Write the passages of ``world``.

    Args:
        world: The world.
        seed: Seed for template choice, distractors and passage order.

    Returns:
        The corpus, with doc ids ``d00000``... in a shuffled (seeded) order.
    """
    rng = random.Random(f"latentrag-world/{seed}/passages")
    ids = list(world.entities)
    raw: list[tuple[str, str, list[tuple[str, set]]]] = []  # (entity id, title, sentences)
    for eid in ids:
        e = world[eid]
        core, works = _BUILDERS[e.kind](world, eid, rng)
        n_works = sum(len(v) for v in world.works.get(eid, {}).values())
        parts = [core, works] if n_works >= 5 else [core + works]
        host_values = {world.value_text(eid, r) for r in world.relations_of(eid)} | {e.name}
        for part in parts:
            extra = []
            for _ in range(rng.randint(1, 2)):
                other = rng.choice(ids)
                sent = passing_fact(world, other, rng)
                if other != eid and not any(v in sent for v in host_values):
                    extra.append((sent, set()))
            if rng.random() < 0.6:
                extra.insert(rng.randint(0, len(extra)), (rng.choice(_TRIVIA[e.kind]), set()))
            raw.append((eid, e.name, part + extra))
    rng.shuffle(raw)
    corpus = Corpus(docs=[])
    for i, (eid, title, sents) in enumerate(raw):
        doc_id = f"d{i:05d}"
        corpus.docs.append({"id": doc_id, "contents": title + "\n" + " ".join(s for s, _ in sents)})
        corpus.entity_docs.setdefault(eid, []).append(doc_id)
        for _, covers in sents:
            for rel in covers:
                corpus.fact_doc[(eid, rel)] = doc_id
    for eid, docs in corpus.entity_docs.items():  # main passage (with the intro) first
        docs.sort(key=lambda d: not any(corpus.fact_doc.get((eid, r)) == d
                                        for r in world.relations_of(eid)))  # fmt: skip
    return corpus

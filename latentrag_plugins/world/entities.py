"""The entity and relation graph of the fictional world.

Entities are people, cities, countries, organisations, films and books. Relations are functional
(one value per subject) so that every question has exactly one answer. The generator keeps the
world chronologically consistent (founders are adults when they found, films come out after
their directors are grown up, books are published after their publisher exists) and never states
a fact twice with different values.

Splits: every entity gets a split (train/dev/test). People, organisations, films and books form
clusters inside one split (a film's director and lead actor, a book's author and publisher, an
organisation's founder and spouses all share the film's, book's or organisation's split). Cities
and countries are shared "hubs": anyone may be born in any city. So the subjects and the person /
organisation / film / book bridge entities of dev and test questions never occur in training
questions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .names import ORG_TYPES, NameGenerator

KINDS: tuple[str, ...] = ("country", "city", "person", "organisation", "film", "book")
HUB_KINDS: frozenset[str] = frozenset({"country", "city"})
SPLITS: tuple[str, ...] = ("train", "dev", "test")
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "dev": 0.1, "test": 0.1}
LATEST_YEAR = 2023
FIRST_FILM_YEAR = 1895


@dataclass(frozen=True)
class Relation:
    """A functional relation that passages state and questions ask about.

    Attributes:
        name: Relation key, e.g. ``"director"``.
        subject: Entity kind of the subject.
        target: Entity kind of the value, or ``"year"``.
        via: For derived relations, ``(first, second)``: the value is ``second`` of ``first``.
    """

    name: str
    subject: str
    target: str
    via: tuple[str, str] | None = None


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation("born_in", "person", "city"),
        Relation("birth_country", "person", "country", via=("born_in", "country")),
        Relation("birth_year", "person", "year"),
        Relation("spouse", "person", "person"),
        Relation("founded", "person", "organisation"),
        Relation("country", "city", "country"),
        Relation("city_founded_year", "city", "year"),
        Relation("capital", "country", "city"),
        Relation("founder", "organisation", "person"),
        Relation("founded_year", "organisation", "year"),
        Relation("headquarters", "organisation", "city"),
        Relation("hq_country", "organisation", "country", via=("headquarters", "country")),
        Relation("director", "film", "person"),
        Relation("star", "film", "person"),
        Relation("release_year", "film", "year"),
        Relation("author", "book", "person"),
        Relation("publisher", "book", "organisation"),
        Relation("publication_year", "book", "year"),
    )
}

FILM_GENRES = ("drama", "comedy", "thriller", "war", "science fiction", "romance", "crime")
BOOK_GENRES = ("novel", "short story collection", "memoir", "poetry collection", "history book")
OTHER_JOBS = ("scientist", "politician", "painter", "architect", "composer", "engineer")


@dataclass
class Entity:
    """One entity of the world.

    Attributes:
        id: Stable id, e.g. ``"person-0042"``.
        kind: One of :data:`KINDS`.
        name: Unique invented name.
        split: ``"train"``, ``"dev"`` or ``"test"``.
        facts: Stored relation values: an entity id (str) or a year (int).
        attrs: Descriptive attributes that no question asks about (gender, genre, org type...).
    """

    id: str
    kind: str
    name: str
    split: str
    facts: dict[str, str | int] = field(default_factory=dict)
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SizeConfig:
    """How many entities of each kind, and questions per kind and split.

    Attributes:
        countries: Number of countries.
        cities: Number of cities.
        persons: Number of people.
        organisations: Number of organisations.
        films: Number of films.
        books: Number of books.
        questions_per_kind: Questions of each kind (1hop/2hop/3hop/comparison) per split.
    """

    countries: int
    cities: int
    persons: int
    organisations: int
    films: int
    books: int
    questions_per_kind: dict[str, int]


SIZES: dict[str, SizeConfig] = {
    "small": SizeConfig(6, 30, 170, 45, 50, 50, {"train": 50, "dev": 10, "test": 10}),
    "default": SizeConfig(16, 220, 1500, 400, 600, 600, {"train": 1500, "dev": 150, "test": 150}),
}


class World:
    """The generated entities plus lookups over them.

    Args:
        seed: Seed the world was generated from.
        size: Size name (a key of :data:`SIZES`).
        entities: All entities, in generation order.
    """

    def __init__(self, seed: int, size: str, entities: list[Entity]) -> None:
        self.seed = seed
        self.size = size
        self.entities: dict[str, Entity] = {e.id: e for e in entities}
        self.works: dict[str, dict[str, list[str]]] = {}
        for e in entities:
            for rel, role in (("director", "directed"), ("star", "starred"), ("author", "wrote")):
                if rel in e.facts:
                    person = self.works.setdefault(str(e.facts[rel]), {})
                    person.setdefault(role, []).append(e.id)

    def __getitem__(self, eid: str) -> Entity:
        return self.entities[eid]

    def of_kind(self, kind: str, split: str | None = None) -> list[Entity]:
        """Entities of ``kind`` (optionally only those of ``split``), in generation order."""
        return [
            e
            for e in self.entities.values()
            if e.kind == kind and (split is None or e.split == split)
        ]

    def value(self, eid: str, relation: str) -> str | int | None:
        """The value of ``relation`` for entity ``eid``: an entity id, a year, or None."""
        rel = RELATIONS[relation]
        if rel.via is not None:
            first = self.entities[eid].facts.get(rel.via[0])
            return None if first is None else self.entities[str(first)].facts.get(rel.via[1])
        return self.entities[eid].facts.get(relation)

    def text(self, value: str | int) -> str:
        """The surface string of a value: the entity's name, or the year as digits."""
        return str(value) if isinstance(value, int) else self.entities[value].name

    def value_text(self, eid: str, relation: str) -> str | None:
        """The surface string of ``relation`` for ``eid``, or None when undefined."""
        v = self.value(eid, relation)
        return None if v is None else self.text(v)

    def relations_of(self, eid: str) -> list[str]:
        """Names of the relations defined for ``eid`` (stored and derived)."""
        kind = self.entities[eid].kind
        return [
            r.name
            for r in RELATIONS.values()
            if r.subject == kind and self.value(eid, r.name) is not None
        ]


def _split_counts(total: int, minimum: int = 1) -> dict[str, int]:
    dev = max(minimum, round(total * SPLIT_FRACTIONS["dev"]))
    test = max(minimum, round(total * SPLIT_FRACTIONS["test"]))
    return {"train": total - dev - test, "dev": dev, "test": test}


def generate_world(seed: int, size: str = "default") -> World:
    """Generate a self-consistent world for ``seed``; the same seed gives the same world.

    Args:
        seed: Random seed.
        size: ``"small"`` (a few hundred entities) or ``"default"`` (a few thousand).

    Returns:
        The world.
    """
    if size not in SIZES:
        raise ValueError(f"unknown world size {size!r}; choose one of {sorted(SIZES)}")
    cfg = SIZES[size]
    rng = random.Random(f"latentrag-world/{seed}/entities")
    names = NameGenerator(random.Random(f"latentrag-world/{seed}/names"))
    ents: list[Entity] = []

    def new(kind: str, name: str, split: str, n: int) -> Entity:
        e = Entity(f"{kind}-{n:04d}", kind, name, split)
        ents.append(e)
        return e

    def split_list(total: int, minimum: int = 1) -> list[str]:
        counts = _split_counts(total, minimum)
        return [s for s in SPLITS for _ in range(counts[s])]

    # Hubs: countries and cities (each country gets at least two cities and one capital).
    c_splits = split_list(cfg.countries)
    rng.shuffle(c_splits)
    countries = [new("country", names.country(), s, i) for i, s in enumerate(c_splits)]
    city_splits = split_list(cfg.cities)
    rng.shuffle(city_splits)
    cities = [new("city", names.city(), s, i) for i, s in enumerate(city_splits)]
    for i, city in enumerate(cities):
        n = len(countries)
        country = countries[i % n] if i < 2 * n else rng.choice(countries)
        city.facts["country"] = country.id
        city.facts["city_founded_year"] = rng.randint(850, 1800)
        city.attrs["region"] = rng.choice(("north", "south", "east", "west", "centre"))
    for country in countries:
        own = [c for c in cities if c.facts["country"] == country.id]
        capital = rng.choice(own)
        country.facts["capital"] = capital.id
        capital.attrs["capital"] = "yes"

    # Clusters: people, organisations, films and books, generated split by split.
    counters = {k: 0 for k in KINDS}

    def new_c(kind: str, name: str, split: str) -> Entity:
        counters[kind] += 1
        return new(kind, name, split, counters[kind] - 1)

    per_split = {
        k: _split_counts(getattr(cfg, k), 2) for k in ("persons", "organisations", "films", "books")
    }
    for split in SPLITS:
        people: list[Entity] = []
        for _ in range(per_split["persons"][split]):
            gender = rng.choice("fm")
            p = new_c("person", names.person(gender), split)
            p.attrs["gender"] = gender
            p.facts["birth_year"] = rng.randint(1840, 1990)
            p.facts["born_in"] = rng.choice(cities).id
            people.append(p)
        roles: dict[str, list[Entity]] = {"director": [], "author": [], "actor": [], "other": []}
        for p in people:
            r = rng.random()
            role = (
                "director"
                if r < 0.25
                else "author"
                if r < 0.5
                else "actor"
                if r < 0.75
                else "other"
            )
            roles[role].append(p)
        # Spouses: pair 60% of people, neighbours in birth year.
        married = sorted(rng.sample(people, int(len(people) * 0.6) // 2 * 2),
                         key=lambda p: (p.facts["birth_year"], p.id))  # fmt: skip
        for a, b in zip(married[::2], married[1::2]):
            a.facts["spouse"], b.facts["spouse"] = b.id, a.id
        # Organisations: founders prefer directors and authors (for multi-hop chains).
        n_orgs = per_split["organisations"][split]
        types = ["publisher", "publisher"] + [rng.choice(ORG_TYPES) for _ in range(n_orgs - 2)]
        creators = [p for p in roles["director"] + roles["author"] if p.facts["birth_year"] < 1990]
        others = [p for p in people if p not in creators and p.facts["birth_year"] < 1990]
        rng.shuffle(creators)
        rng.shuffle(others)
        k = int(n_orgs * 0.6)
        founders = (creators[:k] + others + creators[k:])[:n_orgs]
        for org_type, founder in zip(types, founders):
            o = new_c("organisation", names.organisation(org_type), split)
            o.attrs["type"] = org_type
            o.facts["founder"] = founder.id
            born = int(founder.facts["birth_year"])
            o.facts["founded_year"] = min(LATEST_YEAR, born + rng.randint(22, 60))
            o.facts["headquarters"] = rng.choice(cities).id
            founder.facts["founded"] = o.id
        publishers = [e for e in ents if e.kind == "organisation" and e.split == split
                      and e.attrs["type"] == "publisher"]  # fmt: skip
        # Films: directors may make several; the lead actor is another person, aged 8 to 70.
        directors = roles["director"] or people
        actors = roles["actor"] or people
        for _ in range(per_split["films"][split]):
            for _try in range(200):
                d = rng.choice(directors)
                born = int(d.facts["birth_year"])
                first, last = max(born + 22, FIRST_FILM_YEAR), min(LATEST_YEAR, born + 65)
                if first > last:
                    continue
                year = rng.randint(first, last)
                cands = [a for a in actors if a is not d and _age_ok(a, year, 8, 70)]
                cands = cands or [a for a in people if a is not d and _age_ok(a, year, 8, 70)]
                if cands:
                    break
            else:  # pragma: no cover - needs a degenerate split
                raise RuntimeError(f"no lead actor fits a film in split {split}")
            f = new_c("film", names.film(), split)
            f.attrs["genre"] = rng.choice(FILM_GENRES)
            f.facts["director"] = d.id
            f.facts["release_year"] = year
            f.facts["star"] = rng.choice(cands).id
        # Books: written at 20 to 75 by a writer, published by a publisher that already existed.
        authors = roles["author"] or people
        for _ in range(per_split["books"][split]):
            for _try in range(200):
                a = rng.choice(authors)
                born = int(a.facts["birth_year"])
                last = min(LATEST_YEAR, born + 75)
                pubs = [o for o in publishers if int(o.facts["founded_year"]) <= last]
                if pubs:
                    break
            else:  # pragma: no cover - needs a degenerate split
                raise RuntimeError(f"no publisher fits a book in split {split}")
            publisher = rng.choice(pubs)
            b = new_c("book", names.book(), split)
            b.attrs["genre"] = rng.choice(BOOK_GENRES)
            b.facts["author"] = a.id
            b.facts["publication_year"] = rng.randint(
                max(born + 20, int(publisher.facts["founded_year"])), last
            )
            b.facts["publisher"] = publisher.id

    world = World(seed, size, ents)
    for p in world.of_kind("person"):
        p.attrs["occupation"] = _occupation(world, p, rng)
    return world


def _age_ok(person: Entity, year: int, low: int, high: int) -> bool:
    return low <= year - int(person.facts["birth_year"]) <= high


def _occupation(world: World, person: Entity, rng: random.Random) -> str:
    jobs = []
    works = world.works.get(person.id, {})
    if "directed" in works:
        jobs.append("film director")
    if "wrote" in works:
        jobs.append("writer")
    if "starred" in works:
        jobs.append("actor" if person.attrs["gender"] == "m" else "actress")
    if not jobs and "founded" in person.facts:
        jobs.append("entrepreneur")
    if not jobs:
        jobs.append(rng.choice(OTHER_JOBS))
    return " and ".join(jobs[:2])

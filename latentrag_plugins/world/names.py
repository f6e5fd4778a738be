"""Invented, pronounceable names for the fictional world, unique across the whole world.

Every name contains at least one invented word that no other entity uses (a person's surname, a
city's or country's single word, the invented word inside a film, book or organisation title). So
an entity's full name, matched on word boundaries, never occurs inside another entity's name, and
no real-world knowledge helps to answer a question about it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

_ONSETS: tuple[str, ...] = (
    "b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
    "b", "d", "k", "l", "m", "n", "r", "s", "t", "v",
    "br", "dr", "gr", "kr", "tr", "st", "th", "sh", "fl", "kl",
)  # fmt: skip
_VOWELS: tuple[str, ...] = ("a", "e", "i", "o", "u", "a", "e", "o", "a", "e", "i", "o", "ai", "ou")
_CODAS: tuple[str, ...] = ("", "", "", "", "", "n", "r", "l", "s", "m", "n", "r")
_CONSONANT_RUN = re.compile(r"[^aeiouy]{3}")
_VOWEL_RUN = re.compile(r"[aeiouy]{3}|aa|ii|uu|ae|ea")

_COUNTRY_SUFFIXES = ("ia", "ania", "land", "mark", "ora", "esh", "istan", "ary", "ia")
_CITY_SUFFIXES = ("", "", "", "holm", "ford", "port", "mere", "vik", "grad", "burg", "stad", "wick")
_SURNAME_SUFFIXES = ("", "", "", "", "sen", "ova", "ez", "ard", "ini", "berg", "wyn")

_ORG_SUFFIXES: dict[str, tuple[str, ...]] = {
    "company": ("Industries", "Group", "Holdings", "Works", "Trading Company", "Corporation"),
    "publisher": ("Press", "House", "Publishing", "Books"),
    "studio": ("Pictures", "Studios", "Films"),
    "institute": ("Institute", "Foundation", "Society", "Academy"),
    "university": ("University",),
}

ADJECTIVES: tuple[str, ...] = (
    "Silent", "Last", "Golden", "Hidden", "Broken", "Distant", "Crimson", "Quiet", "Burning",
    "Winter", "Lost", "Second", "Pale", "Wandering", "Hollow", "Bright", "Iron", "Secret",
)  # fmt: skip
NOUNS: tuple[str, ...] = (
    "Road", "River", "Garden", "Letter", "Harbour", "Shadow", "Bridge", "Lantern", "Orchard",
    "Tower", "Song", "Mirror", "Crossing", "Summer", "Island", "Voyage", "Archive", "Storm",
)  # fmt: skip

# Real places and given names that syllables could produce by chance, pronouns, and the cue
# words the oracle reads facts by (a name must never look like one).
_BLOCKLIST: frozenset[str] = frozenset(
    """lima roma rome kobe oslo bern nara sofia malta cuba peru chad mali togo fiji riga baku doha
    dili kiev kyiv lagos dakar milan tokyo kyoto osaka paris maria anna dana tina nina lena sara
    mara vera kara dora nora tara lara mina rita india china iran iraq oman nepal laos gaza texas
    boston dallas berlin vienna london hanoi seoul delhi cairo tunis rabat accra lusaka harare
    kabul minsk vilnius tallinn zagreb skopje tirana sana tel aviv bonn hamburg essen moscow praha
    prague lisbon madrid porto sevilla napoli genova torino parma pisa siena
    he she his her hers him it its they them their one two ten man men son sun
    born birthplace married spouse founded founder established city town cities located capital
    headquarters headquartered based home directed director directing stars starred lead appeared
    released premiered film films wrote written author by published publisher book books novel
    memoir collection""".split()  # noqa: SIM905
)


class NameGenerator:
    """Seeded generator of unique invented names.

    Args:
        rng: The random generator to draw from (the caller seeds it).
        first_names: Size of each (feminine/masculine) pool of reusable given names.
        avoid: Names never to produce; no new invented word repeats one of their words (the
            given-name pools are drawn first, unaffected, so a given name may).
    """

    def __init__(
        self, rng: random.Random, first_names: int = 120, avoid: Iterable[str] = ()
    ) -> None:
        self.rng = rng
        self._used_words: set[str] = {w.lower() for w in ADJECTIVES + NOUNS} | set(_BLOCKLIST)
        for suffixes in _ORG_SUFFIXES.values():
            for s in suffixes:
                self._used_words.update(s.lower().split())
        self._used_words.update(
            {"the", "of", "and", "for", "to", "a", "from", "return", "letters", "university"}
        )
        self._used_names: set[str] = set()
        self._first: dict[str, list[str]] = {
            "f": [self.word(1, 2, ending="a", min_len=3) for _ in range(first_names)],
            "m": [self.word(1, 2, ending="n", min_len=3) for _ in range(first_names)],
        }
        # After the given-name pools, so that avoiding names leaves them as they were.
        avoid = list(avoid)
        self._used_names.update(avoid)
        self._used_words.update(w.lower() for name in avoid for w in name.split())

    def _syllable(self) -> str:
        return self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)

    def word(
        self,
        min_syl: int = 2,
        max_syl: int = 3,
        ending: str = "",
        suffixes: tuple[str, ...] = ("",),
        min_len: int = 4,
    ) -> str:
        """Return a new invented word, capitalised, never returned before.

        Args:
            min_syl: Fewest syllables.
            max_syl: Most syllables.
            ending: Optional letters appended (e.g. a feminine ``"a"``).
            suffixes: Candidate suffixes; one is drawn per attempt.
            min_len: Fewest letters.
        """
        for _ in range(1000):
            n = self.rng.randint(min_syl, max_syl)
            stem = "".join(self._syllable() for _ in range(n))
            if ending and ending[0] not in "aeiou" and stem[-1] not in "aeiou":
                continue
            w = stem + ending + self.rng.choice(suffixes)
            flat = w.lower().replace("th", "T").replace("sh", "S")
            if (
                not min_len <= len(w) <= 11
                or _CONSONANT_RUN.search(flat)
                or _VOWEL_RUN.search(flat)
            ):
                continue
            key = w.lower()
            if key in self._used_words:
                continue
            self._used_words.add(key)
            return w.capitalize()
        raise RuntimeError("name space exhausted")  # pragma: no cover

    def _unique(self, make) -> str:
        for _ in range(1000):
            name = make()
            if name not in self._used_names:
                self._used_names.add(name)
                return name
        raise RuntimeError("name space exhausted")  # pragma: no cover

    def person(self, gender: str) -> str:
        """A given name from the gender's pool plus a unique invented surname."""
        return self._unique(
            lambda: (
                f"{self.rng.choice(self._first[gender])} "
                f"{self.word(2, 2, suffixes=_SURNAME_SUFFIXES)}"
            )
        )

    def city(self) -> str:
        """A one-word city name."""
        return self._unique(lambda: self.word(1, 2, suffixes=_CITY_SUFFIXES))

    def country(self) -> str:
        """A one-word country name with a country-like suffix."""
        return self._unique(lambda: self.word(1, 2, suffixes=_COUNTRY_SUFFIXES))

    def organisation(self, org_type: str) -> str:
        """An organisation name fitting ``org_type`` (a key of the suffix table)."""
        suffix = self.rng.choice(_ORG_SUFFIXES[org_type])
        if org_type == "university" and self.rng.random() < 0.5:
            return self._unique(lambda: f"University of {self.word()}")
        return self._unique(lambda: f"{self.word()} {suffix}")

    def film(self) -> str:
        """A film title containing one invented word."""
        r = self.rng
        patterns = (
            lambda w: f"The {r.choice(ADJECTIVES)} {w}",
            lambda w: w,
            lambda w: f"The {r.choice(NOUNS)} of {w}",
            lambda w: f"Return to {w}",
            lambda w: f"{w} {r.choice(NOUNS)}",
        )
        return self._unique(lambda: r.choice(patterns)(self.word()))

    def book(self) -> str:
        """A book title containing one invented word."""
        r = self.rng
        patterns = (
            lambda w: f"The {r.choice(NOUNS)} of {w}",
            lambda w: f"{w} and the {r.choice(NOUNS)}",
            lambda w: f"Letters from {w}",
            lambda w: f"A {r.choice(NOUNS)} for {w}",
            lambda w: f"The {w} {r.choice(NOUNS)}",
            lambda w: f"{r.choice(ADJECTIVES)} {w}",
        )
        return self._unique(lambda: r.choice(patterns)(self.word()))


ORG_TYPES: tuple[str, ...] = tuple(_ORG_SUFFIXES)

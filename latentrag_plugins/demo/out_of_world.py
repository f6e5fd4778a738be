"""Saying when the demo models are asked about something their fictional world does not hold.

The demo models know only the invented world they were trained on. Asked about anything else
they still answer, confidently and wrongly; the command line then adds a note.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..results import RetrievedDoc

EXAMPLE = "In which city was the director of Lardave born?"
_SKIP = {
    "a", "an", "and", "are", "did", "does", "for", "from", "how", "in", "is", "of", "on", "or",
    "the", "to", "was", "were", "what", "when", "where", "which", "who", "whom", "whose", "why",
    "with", "born", "city", "country", "name", "year", "first", "after", "before",
}  # fmt: skip


def unread_names(question: str, docs: Iterable[RetrievedDoc]) -> list[str]:
    """The question's names (its capitalised words after the first; else its longer words)
    when no retrieved document mentions any of them; empty when one is mentioned."""
    words = re.findall(r"[^\W\d_][\w'-]*", question)
    names = [w for i, w in enumerate(words) if i and w[0].isupper() and w.lower() not in _SKIP]
    if not names:
        names = [w for w in words if len(w) > 3 and w.lower() not in _SKIP]
    text = " ".join(d.text for d in docs).lower()
    if not names or any(w.lower() in text for w in names):
        return []
    return list(dict.fromkeys(names))


def out_of_world_note(question: str, docs: Iterable[RetrievedDoc]) -> str | None:
    """A note for people when the documents mention none of the question's names, else None."""
    missing = unread_names(question, docs)
    if not missing:
        return None
    return (
        f"note: no document the demo model read mentions {', '.join(missing)}. The demo models "
        "know only their own fictional world (docs/world.md), so this answer is a guess; ask "
        f"about its entities, e.g. {EXAMPLE!r}"
    )

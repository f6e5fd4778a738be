"""An answer's text as its tokens come, streamed in pieces, with names cased as the sources write them.

Tokenizers that lower-case (WordPiece ``uncased``) generate ``soukarholm`` for ``Soukarholm``.
When the answer occurs in what the model read (its documents or the question), ignoring case,
it is shown as written there. The pieces always join into the final answer, so streamed and
returned text agree; exact match is unchanged (it ignores case).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def _lower(text: str) -> str:
    """``text.lower()``, keeping every character's position (a few characters lower to two)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


class Casing:
    """Writes answer text as the sources write it, where they hold it (ignoring case).

    Args:
        sources: The texts whose casing the answer takes (documents, the question).
    """

    def __init__(self, sources: Sequence[str] = ()) -> None:
        self.source = "\n".join(sources)
        self.low = _lower(self.source)

    def apply(self, raw: str, sent: str = "") -> str:
        """``raw`` as the sources write it, where they hold it and that agrees with ``sent``
        (the text already given out); else ``raw`` after ``sent``."""
        core = raw.strip()
        if core and self.low:
            lead = raw.index(core[0])
            want, start = _lower(core), 0
            while (at := self.low.find(want, start)) >= 0:
                text = raw[:lead] + self.source[at : at + len(core)] + raw[lead + len(core) :]
                if text.startswith(sent):
                    return text
                start = at + 1
        return sent + raw[len(sent) :]


def cased(text: str, sources: Sequence[str]) -> str:
    """``text`` with the casing of ``sources`` where they hold it (see :class:`Casing`)."""
    return Casing(sources).apply(text)


class AnswerText:
    """Decodes an answer token by token into text pieces.

    Args:
        tokenizer: Decodes the tokens (special tokens skipped).
        on_piece: Called with each new piece of text (None: not streamed).
    """

    def __init__(self, tokenizer: Any, on_piece: Callable[[str], None] | None = None) -> None:
        self.tokenizer = tokenizer
        self.on_piece = on_piece
        self.tokens: list[int] = []
        self.sent = ""  # the text given out so far
        self._raw_sent = ""  # the same text as decoded
        self._casing = Casing()

    def read(self, sources: Sequence[str]) -> None:
        """Set the texts whose casing the answer takes (documents, the question)."""
        self._casing = Casing(sources)

    def add(self, token: int) -> None:
        """Append a generated token (not a stop token)."""
        self.tokens.append(token)
        self._send(final=False)

    def finish(self) -> str:
        """Give out what is still held back and return the whole answer, stripped."""
        self._send(final=True)
        return self.sent.strip()

    def _send(self, final: bool) -> None:
        raw = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        # Wait while the text ends inside a multi-byte character or rewrites what was sent.
        if len(raw) <= len(self._raw_sent) or not raw.startswith(self._raw_sent):
            return
        if not final and raw[-1] == "\ufffd":
            return
        text = self._casing.apply(raw, self.sent)
        piece = text[len(self.sent) :]
        self.sent, self._raw_sent = text, raw
        if self.on_piece is not None and piece:
            self.on_piece(piece)

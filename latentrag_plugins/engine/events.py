"""What a request tells its caller while it runs: steps, decoded thoughts and answer tokens.

Events reach each request's own consumer in order (``for event in handle``). The framework
adapters turn them into their own callbacks and events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..results import RetrievedDoc

Action = Literal["retrieve", "answer"]


@dataclass(frozen=True)
class StepEvent:
    """A latent step is done: its action and, for a retrieval, the documents it found.

    Attributes:
        step: 0-based step index.
        action: ``"retrieve"`` or ``"answer"``.
        forced: True when the answer was forced (``max_steps`` or the context budget).
        docs: The documents the step's search returned, best first (empty when answering).
    """

    step: int
    action: Action
    forced: bool = False
    docs: list[RetrievedDoc] = field(default_factory=list)


@dataclass(frozen=True)
class ThoughtEvent:
    """A step's latent thought and subquery decoded to text (requests with ``decode=True``);
    it comes just before the step's :class:`StepEvent`.

    Attributes:
        step: 0-based step index.
        action: The step's action.
        thought: The decoded latent thought.
        subquery: The decoded latent subquery (None when the step answers).
    """

    step: int
    action: Action
    thought: str | None
    subquery: str | None


@dataclass(frozen=True)
class TokenEvent:
    """A piece of the answer's text; the pieces join into the result's ``answer``."""

    text: str


Event = StepEvent | ThoughtEvent | TokenEvent

"""What every agent's scheduler keeps: its requests in flight, their token group, pass counts."""

from __future__ import annotations

from typing import Any

from .request import PassStats, Phase
from .token_group import TokenGroup


class InFlight:
    """The requests in flight on one LLM (a base of the agents' schedulers).

    Args:
        llm: The causal LM whose passes the requests share.
        pad_id: Its padding token id.
    """

    def __init__(self, llm: Any, pad_id: int) -> None:
        self.requests: list[Any] = []
        self.stats = PassStats()
        self.group = TokenGroup(llm, pad_id)

    def add(self, request: Any) -> None:
        """Take a new request in; it is fed at the next round."""
        self.requests.append(request)

    def remove(self, request: Any) -> None:
        """Drop a request (cancelled or failed) and its cache."""
        if request in self.requests:
            self.requests.remove(request)
        if request in self.group:
            self.group.release(request, keep_cache=False)
        request.kv = type(request.kv)()
        request.phase = Phase.DONE

    def runnable(self) -> bool:
        """Whether a round has a pass to run (some request is not waiting for its store)."""
        return any(r.phase in (Phase.FEED, Phase.GENERATE) for r in self.requests)

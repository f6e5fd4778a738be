"""What every agent's scheduler keeps: its requests in flight, their token group, pass counts."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ..runtime import eval_mode
from .request import PassStats, Phase
from .token_group import TokenGroup


class InFlight:
    """The requests in flight on one LLM (a base of the agents' schedulers).

    The model's state (eval mode; whether the lean decoder, hence the token group, applies) is
    checked as requests join, not at every pass: a model changed while requests are in flight
    (hooks, adapters, train mode) is seen by the requests that join after the change.

    Args:
        llm: The causal LM whose passes the requests share.
        pad_id: Its padding token id.
        module: What the passes run in eval mode (the LLM, or the model around it).
    """

    def __init__(self, llm: Any, pad_id: int, module: Any) -> None:
        self.requests: list[Any] = []
        self.stats = PassStats()
        self.group = TokenGroup(llm, pad_id)
        self._llm, self._module = llm, module
        self._checked: dict[str, bool] = {}

    def add(self, request: Any) -> None:
        """Take a new request in; it is fed at the next round."""
        self.requests.append(request)
        self._checked.clear()

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """The block with the model in eval mode (restored after it, as ``eval_mode`` does)."""
        if self._once("eval", lambda: not any(m.training for m in self._module.modules())):
            yield
            return
        with eval_mode(self._module):
            yield

    def grouped(self) -> bool:
        """Whether token passes run in the token group (the lean decoder applies); call it in
        :meth:`evaluating`."""
        return self._once("group", lambda: TokenGroup.applies(self._llm))

    def _once(self, name: str, check: Callable[[], bool]) -> bool:
        if name not in self._checked:
            self._checked[name] = check()
        return self._checked[name]

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

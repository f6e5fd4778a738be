"""Checks and stage timing shared by every agent loop (LatentRAG, explicit, naive)."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import torch

from .errors import StoreError
from .results import Timings
from .store.base import check_compatible

STAGES = ("prefill", "reasoning", "retrieval", "answer", "decode")


def check_questions(questions: Sequence[Any]) -> None:
    """Raise ValueError unless every question is a non-empty, non-blank string of text."""
    for q in questions:
        if not isinstance(q, str) or not q.strip():
            raise ValueError("question is empty: ask a non-empty question")
        check_text(q, "question")


def check_text(text: str, what: str) -> None:
    """Raise ValueError if ``text`` is not encodable text (e.g. undecodable bytes that Python
    kept as surrogates, from a command line in another encoding)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        part = text[exc.start : exc.end]
        try:  # undecoded bytes kept as surrogates: show the bytes
            bad = f"bytes {part.encode('utf-8', 'surrogateescape')!r}"
        except UnicodeEncodeError:  # a lone surrogate of another kind (a JSON escape)
            bad = part.encode("ascii", "backslashreplace").decode("ascii")
        raise ValueError(f"{what} is not valid UTF-8 text ({bad} at {exc.start})") from None


def check_store(store: Any, encoder_id: str, dim: int) -> None:
    """Raise if ``store`` was built with another encoder/dim, or holds no documents."""
    check_compatible(store, encoder_id, dim)
    if hasattr(store, "__len__") and len(store) == 0:
        raise StoreError(f"{type(store).__name__} is empty: index some documents first")


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode for the block; training mode comes back however it ends."""
    if not any(m.training for m in module.modules()):
        yield  # already in eval mode throughout: nothing to set or restore
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        if was_training:
            module.train()


def evaluating(attr: str | None = None) -> Callable[[_Fn], _Fn]:
    """Run an agent loop (a function or a generator) with its first argument, or that
    argument's ``attr``, in eval mode, restored when the loop returns, raises or is closed."""

    def decorate(loop: _Fn) -> _Fn:
        def module(owner: Any) -> torch.nn.Module:
            return getattr(owner, attr) if attr else owner

        @functools.wraps(loop)
        def run_gen(owner: Any, *args: Any, **kwargs: Any) -> Any:
            with eval_mode(module(owner)):
                return (yield from loop(owner, *args, **kwargs))

        @functools.wraps(loop)
        def run(owner: Any, *args: Any, **kwargs: Any) -> Any:
            with eval_mode(module(owner)):
                return loop(owner, *args, **kwargs)

        return cast(_Fn, run_gen if inspect.isgeneratorfunction(loop) else run)

    return decorate


class StageClock:
    """Accumulates wall time per stage, synchronising CUDA so GPU work is counted."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.ms: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block under stage ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.ms[name] += (time.perf_counter() - t0) * 1e3

    def timings(self) -> Timings:
        """Stage times so far, and the total since the clock started."""
        return Timings(**self.ms, total=(time.perf_counter() - self.start) * 1e3)

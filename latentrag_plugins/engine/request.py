"""One question on its way through an agent's loop: its options, progress and result.

A request moves through phases: ``FEED`` (ready for a wide pass: its prompt or documents, and
for LatentRAG the latent slots of its next step), ``SEARCH`` (waiting for its store),
``GENERATE`` (generating text, one token per pass) and ``DONE``. A scheduler moves it; this
module only keeps its state and turns it into a
:class:`~latentrag_plugins.results.LatentRAGResult`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..extractive import SpanConstraint
from ..results import LatentRAGResult, RetrievedDoc, Step, Timings
from ..runtime import STAGES
from .answer_text import AnswerText
from .events import Event, StepEvent, TokenEvent
from .rows import RowKV

if TYPE_CHECKING:
    from ..config import LatentRAGConfig


class Phase(enum.Enum):
    """Where a request is in the loop."""

    FEED = "feed"  # ready for a wide pass (prompt, documents, latent slots)
    SEARCH = "search"  # waiting for its search
    GENERATE = "generate"  # generating text, one token per pass
    DONE = "done"


@dataclass(frozen=True)
class RequestOptions:
    """The settings of one request (see :meth:`~latentrag_plugins.LatentRAG.run`).

    Attributes:
        max_steps: Most retrieval steps.
        top_k: Documents per retrieval.
        min_steps: Retrieval steps taken whatever the action (capped by ``max_steps``).
        decode: Decode each step's latent thought and subquery to text as the loop goes.
        logit_lens: Attach LogitLens top-5 tokens to every step.
        generate_answer: Generate the answer (False: stop after the last step).
        final_thought: Without an answer, still run the pass after the last allowed retrieval
            for its thought latent.
    """

    max_steps: int
    top_k: int
    min_steps: int = 0
    decode: bool = False
    logit_lens: bool = False
    generate_answer: bool = True
    final_thought: bool = False

    @classmethod
    def resolve(
        cls,
        config: LatentRAGConfig,
        *,
        max_steps: int | None = None,
        top_k: int | None = None,
        min_steps: int = 0,
        decode: bool = False,
        logit_lens: bool = False,
        generate_answer: bool = True,
        final_thought: bool | None = None,
    ) -> RequestOptions:
        """Options with the model's defaults filled in.

        Raises:
            ValueError: A negative ``max_steps`` or ``min_steps``, or ``top_k`` below 1.
        """
        max_steps = config.max_steps if max_steps is None else int(max_steps)
        top_k = config.top_k if top_k is None else int(top_k)
        if max_steps < 0 or top_k < 1 or min_steps < 0:
            raise ValueError("max_steps and min_steps must be >= 0 and top_k >= 1")
        if final_thought is None:
            final_thought = decode or logit_lens
        return cls(
            max_steps=max_steps, top_k=top_k, min_steps=int(min_steps), decode=bool(decode),
            logit_lens=bool(logit_lens), generate_answer=bool(generate_answer),
            final_thought=bool(final_thought),
        )  # fmt: skip


@dataclass
class PassStats:
    """Step and token passes an engine ran, and the rows they fed (decoding aside)."""

    passes: int = 0
    rows: int = 0

    def count(self, rows: int) -> None:
        """Count one pass of ``rows`` rows."""
        self.passes += 1
        self.rows += rows

    @property
    def mean_batch(self) -> float:
        """Mean rows per pass (0 before any pass)."""
        return self.rows / self.passes if self.passes else 0.0


@dataclass
class SearchJob:
    """A request's latent query to search: ``embedding (dim,)`` float32, L2-normalised."""

    request: Request
    step: int
    embedding: np.ndarray
    k: int
    latents: torch.Tensor | None = None  # (n, d_llm) the latent subquery
    thoughts: torch.Tensor | None = None  # (m, d_llm) the latent thought of the same step


class Request:
    """What every agent's request keeps: where it is, its cache and steps, and what it cost.

    Args:
        question: The question.
        emit: Where its events go (called on the thread that runs the loop).
        search: What searches its store (the engine's search function; unused by a loop
            driven by hand).
        loop: The event loop an async ``search`` runs on (None: a sync one).
    """

    def __init__(
        self,
        question: str,
        emit: Callable[[Event], None],
        search: Any = None,
        loop: Any = None,
    ) -> None:
        self.question = question
        self.emit = emit
        self.search = search
        self.loop = loop
        self.phase = Phase.FEED
        self.kv = RowKV()
        self.steps: list[Step] = []
        self.passes = 0  # forward passes it took part in (decoding ones included)
        self.input_tokens = 0
        self.batch_sizes: list[int] = []  # rows of each pass it took part in
        self.stages = dict.fromkeys(STAGES, 0.0)
        self.started = time.perf_counter()
        self.error: BaseException | None = None  # set when it failed alone
        self.result: LatentRAGResult | None = None

    @property
    def docs(self) -> list[RetrievedDoc]:
        """Every document it has read so far, in step then rank order."""
        return [d for s in self.steps for d in s.docs]

    def took_part(self, stage: str, ms: float, rows: int) -> None:
        """Count one forward pass of ``rows`` rows that took ``ms`` under ``stage``."""
        self.passes += 1
        self.batch_sizes.append(rows)
        self.stages[stage] += ms

    def _result(self, answer: str, output_tokens: int) -> LatentRAGResult:
        """The result, from what it recorded (the request is done)."""
        self.phase = Phase.DONE
        sizes = self.batch_sizes
        self.result = LatentRAGResult(
            answer=answer,
            steps=self.steps,
            timings_ms=Timings(**self.stages, total=(time.perf_counter() - self.started) * 1e3),
            forward_passes=self.passes,
            input_tokens=self.input_tokens,
            output_tokens=output_tokens,
            batch_size=sum(sizes) / len(sizes) if sizes else 1.0,
        )
        return self.result


class LatentRequest(Request):
    """One question's state in the latent loop.

    Args:
        prompt: The question's prompt ids.
        question: The question.
        options: Its settings.
        answer: The answer's text builder (streams its pieces, if anyone listens).
        emit, search, loop: As for :class:`Request`.
    """

    def __init__(
        self,
        prompt: list[int],
        question: str,
        options: RequestOptions,
        answer: AnswerText,
        emit: Callable[[Event], None],
        search: Any = None,
        loop: Any = None,
    ) -> None:
        super().__init__(question, emit, search, loop)
        self.options = options
        self.answer = answer
        self.pending = prompt  # ids to feed before the next slots: the prompt, then documents
        self.step = 0  # index of the next step
        self.latents: list[dict[str, torch.Tensor]] = []
        self.logits: torch.Tensor | None = None  # (V,) next answer token, once <answer> is fed
        self.spans: SpanConstraint | None = None  # extractive answers: what it may quote
        self.stopped = False  # the answer ended on a stop token (not the length cap)
        self.fed = 0  # answer tokens fed back to the LLM

    def found(self, docs: list[RetrievedDoc], pending: list[int]) -> None:
        """Record the documents of the step that searched, and what to feed before the next."""
        step = self.steps[-1]
        step.docs = list(docs)
        self.pending = pending
        self.phase = Phase.FEED
        self.emit(StepEvent(step.index, "retrieve", False, step.docs))

    def token(self, token: int) -> None:
        """Record a generated answer token."""
        self.answer.add(token)
        if self.spans is not None:
            self.spans.advance(0, token)

    def finish(self) -> LatentRAGResult:
        """Build the result (the request is done)."""
        tokens = self.answer.tokens
        result = self._result(self.answer.finish(), len(tokens) + int(self.stopped))
        result._latents = self.latents
        result._token_ids = self.kv.tokens + tokens[self.fed :]  # the last token, if not fed
        return result


def piece_sink(emit: Callable[[Event], None]) -> Callable[[str], None]:
    """An ``on_piece`` that emits each answer piece as a :class:`TokenEvent`."""
    return lambda text: emit(TokenEvent(text))

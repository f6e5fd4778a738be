"""The service's HTTP API in JSON: the request body, and the lines of a streamed answer.

``POST /v1/ask`` and ``POST /v1/ask/stream`` take an :class:`AskRequest`. ``/v1/ask`` answers
with the ``LatentRAGResult`` JSON (as ``latentrag ask --json`` prints it); ``/v1/ask/stream``
answers with NDJSON, one JSON object per line:

- ``{"type": "thought", "step", "action", "thought", "subquery"}`` (requests with ``decode``);
- ``{"type": "step", "step", "action", "forced", "docs": [{"id", "text", "score", "metadata"}]}``;
- ``{"type": "token", "text"}``: a piece of the answer;
- last, ``{"type": "result", "result": {...}}`` or ``{"type": "error", "status", "message"}``.

An error answer (any 4xx or 5xx) has the body ``{"type": "error", "status", "message"}``. A score
a store does not give is ``null`` in JSON (NaN in Python). This module needs no server
packages: the client uses it too.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..engine.events import Event, StepEvent, ThoughtEvent, TokenEvent
from ..results import LatentRAGResult, RetrievedDoc

MAX_QUESTION_CHARS = 20_000  # a guard on the body; the model's context budget is checked too
NDJSON = "application/x-ndjson"


class AskRequest(BaseModel):
    """The body of POST /v1/ask and POST /v1/ask/stream: a question and its options (unset
    options take the served model's defaults, as in LatentRAG.run)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    question: str = Field(
        max_length=MAX_QUESTION_CHARS,
        description="The question (not blank).",
        json_schema_extra={"minLength": 1},
    )
    top_k: int | None = Field(default=None, ge=1, le=100, description="Documents per step.")
    max_steps: int | None = Field(default=None, ge=0, le=32, description="Most retrievals.")
    min_steps: int = Field(default=0, ge=0, le=32, description="Fewest retrievals.")
    decode: bool = Field(default=False, description="Decode thoughts and subqueries to text.")
    logit_lens: bool = Field(default=False, description="Top tokens of each latent token.")
    generate_answer: bool = Field(default=True, description="False: stop after the last step.")
    final_thought: bool | None = Field(
        default=None,
        description="Without an answer, still run the last step's pass for its thought "
        "(None: when decode or logit_lens).",
    )

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question is empty: ask a non-empty question")
        return value

    def options(self) -> dict[str, Any]:
        """The engine options (``Engine.submit`` keywords) of this request."""
        return self.model_dump(exclude={"question"})


OPTIONS = tuple(name for name in AskRequest.model_fields if name != "question")


def ask_request(data: Any) -> AskRequest:
    """Validate a request body (a decoded JSON value).

    Raises:
        ValueError: One line naming each bad field (an unknown option lists the known ones).
    """
    if not isinstance(data, dict):
        raise ValueError(_NOT_OBJECT)
    try:
        return AskRequest.model_validate(data)
    except ValidationError as exc:
        raise ValueError(describe_errors(exc.errors())) from None


_NOT_OBJECT = 'the body must be a JSON object such as {"question": "..."}'


def describe_errors(errors: list[Any]) -> str:
    """Pydantic validation errors as one line: ``field: problem`` for each."""
    problems = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        field = ".".join(loc)
        if not field:
            problems.append(_NOT_OBJECT)
        elif e.get("type") == "extra_forbidden":
            problems.append(f"{field}: unknown option (options: {', '.join(OPTIONS)})")
        elif e.get("type") == "missing":
            problems.append(f"{field}: required")
        else:
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{field}: {msg}")
    return "; ".join(problems)


# ---------------------------------------------------------------------- server side: to JSON
def result_json(result: LatentRAGResult) -> str:
    """A result as JSON (scores a store did not give are null; odd metadata values as text)."""
    return result.model_dump_json(fallback=str)


def event_line(event: Event) -> str:
    """One NDJSON line (with its newline) for an engine event."""
    if isinstance(event, TokenEvent):
        data: dict[str, Any] = {"type": "token", "text": event.text}
    elif isinstance(event, ThoughtEvent):
        data = {"type": "thought", "step": event.step, "action": event.action,
                "thought": event.thought, "subquery": event.subquery}  # fmt: skip
    else:
        docs = [json.loads(d.model_dump_json(fallback=str)) for d in event.docs]
        data = {"type": "step", "step": event.step, "action": event.action,
                "forced": event.forced, "docs": docs}  # fmt: skip
    return json.dumps(data, ensure_ascii=False) + "\n"


def result_line(result: LatentRAGResult) -> str:
    """The last NDJSON line of a stream that ended with its result."""
    return f'{{"type": "result", "result": {result_json(result)}}}\n'


def error_body(status: int, message: str) -> str:
    """An error as JSON: the body of an error answer, and the last line of a failed stream."""
    return json.dumps({"type": "error", "status": status, "message": message}, ensure_ascii=False)


# ---------------------------------------------------------------------- client side: from JSON
def parse_result(data: dict[str, Any]) -> LatentRAGResult:
    """A result from its JSON object (null scores become NaN)."""
    for step in data.get("steps") or ():
        for doc in step.get("docs") or ():
            _nan_score(doc)
    return LatentRAGResult.model_validate(data)


def parse_line(data: dict[str, Any]) -> Event | LatentRAGResult | tuple[int, str]:
    """A decoded NDJSON line: an event, the result, or an error's ``(status, message)``.

    Raises:
        ValueError: Not a line of this API.
    """
    kind = data.get("type")
    if kind == "token":
        return TokenEvent(data["text"])
    if kind == "thought":
        return ThoughtEvent(data["step"], data["action"], data["thought"], data["subquery"])
    if kind == "step":
        docs = [RetrievedDoc.model_validate(_nan_score(d)) for d in data["docs"]]
        return StepEvent(data["step"], data["action"], bool(data["forced"]), docs)
    if kind == "result":
        return parse_result(data["result"])
    if kind == "error":
        return int(data.get("status") or 500), str(data.get("message", "unknown error"))
    raise ValueError(f"not a LatentRAG stream line: {str(data)[:200]}")


def _nan_score(doc: dict[str, Any]) -> dict[str, Any]:
    if doc.get("score") is None:
        doc["score"] = math.nan
    return doc

"""The HTTP API of a :class:`~.service.Service`, as a FastAPI app (each Ray Serve replica serves
one; its OpenAPI schema is at ``/openapi.json``).

- ``POST /v1/ask``: an :class:`~.schema.AskRequest` -> the ``LatentRAGResult`` JSON;
- ``POST /v1/ask/stream``: the same, as NDJSON lines (see :mod:`.schema`); a client that closes
  the stream cancels the request;
- ``GET /health``: the replica's state and what it serves.

Errors have the body ``{"type": "error", "status", "message"}``: 400 for a bad request, 502 for
a failed store search, 503 for a full or stopping replica, 500 otherwise.
"""

from __future__ import annotations

import json
from typing import Any

from ..extras import require

require("fastapi", "serve", "the LatentRAG service")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import Response, StreamingResponse  # noqa: E402

from .._version import __version__  # noqa: E402
from ..results import LatentRAGResult  # noqa: E402
from .schema import NDJSON, AskRequest, ask_request, error_body, result_json  # noqa: E402
from .service import Service, error_status  # noqa: E402

_ERROR = {"description": "Error: {type: 'error', status, message}"}
_STREAM = {
    "description": "NDJSON: thought, step and token lines as they come, then a result (or an "
    "error) line.",
    "content": {NDJSON: {}},
}


INFO = {
    "title": "LatentRAG",
    "version": __version__,
    "description": "Agentic RAG that reasons and retrieves in latent space.",
}
_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": AskRequest.model_json_schema()}}}}  # fmt: skip
ASK_ROUTE = {
    "responses": {200: {"model": LatentRAGResult}, 400: _ERROR, 502: _ERROR, 503: _ERROR},
    "summary": "Answer a question.",
    "openapi_extra": _BODY,
}
STREAM_ROUTE = {
    "responses": {200: _STREAM, 400: _ERROR, 503: _ERROR},
    "summary": "Answer a question, streaming its steps, thoughts and answer tokens.",
    "openapi_extra": _BODY,
}
HEALTH_ROUTE = {"summary": "The replica's state, model, encoder and store."}


async def ask(service: Service, request: Request) -> Response:
    """``POST /v1/ask``."""
    try:
        result = await service.submit(await read_request(request)).aresult()
    except Exception as exc:
        return error_response(*error_status(exc))
    return Response(result_json(result), media_type="application/json")


async def ask_stream(service: Service, request: Request) -> Response:
    """``POST /v1/ask/stream``."""
    try:
        handle = service.submit(await read_request(request))
    except Exception as exc:
        return error_response(*error_status(exc))
    return StreamingResponse(service.stream(handle), media_type=NDJSON)


def make_api(service: Service) -> FastAPI:
    """The API of ``service`` as a FastAPI app of its own (for any ASGI server; each Ray Serve
    replica serves the same routes)."""
    app = FastAPI(**INFO)

    @app.post("/v1/ask", **ASK_ROUTE)
    async def ask_route(request: Request) -> Response:
        return await ask(service, request)

    @app.post("/v1/ask/stream", **STREAM_ROUTE)
    async def ask_stream_route(request: Request) -> Response:
        return await ask_stream(service, request)

    @app.get("/health", **HEALTH_ROUTE)
    async def health_route() -> dict[str, Any]:
        return service.health()

    return app


async def read_request(request: Request) -> AskRequest:
    """The request's body as an :class:`AskRequest` (JSON, whatever its content type).

    Raises:
        ValueError: It is not JSON, or not a valid request (the message says why).
    """
    try:
        data = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the body is not JSON ({exc})") from None
    return ask_request(data)


def error_response(status: int, message: str) -> Response:
    """An error answer."""
    headers = {"Retry-After": "1"} if status == 503 else None
    return Response(error_body(status, message), status, headers, "application/json")

"""``RemoteLatentRAG``: a LatentRAG service seen from an app, as a model's engine is seen locally.

``submit(question, **options)`` returns a :class:`~latentrag_plugins.engine.RequestHandle`, read
as a local request's (``next_event``, ``events``, ``result``, ``anext_event``, ``aevents``,
``aresult``, ``cancel``), with the same events and a ``LatentRAGResult`` at the end. Each request
streams its answer over HTTP (``POST /v1/ask/stream``); cancelling the handle, or closing its
event stream early, closes the HTTP stream and the service cancels the request.

The HTTP work of every request runs on one background thread with its own event loop and
connection pool, so handles are read from any thread or event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import weakref
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from ..engine import RequestCancelled, RequestHandle
from ..errors import LatentRAGError
from ..extras import require
from ..results import LatentRAGResult
from .schema import ask_request, parse_line, parse_result

if TYPE_CHECKING:
    from ..config import LatentRAGConfig


class ServiceError(LatentRAGError):
    """The LatentRAG service answered an error, or broke off its answer.

    Attributes:
        url: The service's URL.
        status: The HTTP status of its answer (None when it gave none).
        message: What went wrong.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        code = f" ({status})" if status is not None else ""
        super().__init__(f"LatentRAG service at {url}{code}: {message}")
        self.url, self.status, self.message = url, status, message


class ServiceUnavailable(ServiceError):
    """The service could not be reached, did not answer in time, is full or stopping (503), or
    is not deployed at this URL yet (404)."""


class ServiceRequestError(ServiceError, ValueError):
    """The service refused the request as bad (a 4xx status; e.g. a question too long for the
    model's context)."""


def service_error(url: str, status: int, message: str) -> ServiceError:
    """The error for an error answer of the service."""
    if status == 404:  # Ray Serve's proxy, while the application deploys (or a wrong URL)
        message += " (no LatentRAG API at this URL yet: is the service deployed there?)"
    if 400 <= status < 500 and status != 404:
        return ServiceRequestError(message, url=url, status=status)
    cls = ServiceUnavailable if status in (404, 503) else ServiceError
    return cls(message, url=url, status=status)


class RemoteLatentRAG:
    """A LatentRAG service (``latentrag serve``), used as a model's engine is.

    Args:
        url: The service's base URL, e.g. ``http://127.0.0.1:8000``.
        timeout: Seconds to wait to connect, and for each part of an answer (a streamed
            answer's next line, a whole ``ask`` answer); None waits for ever.
        headers: HTTP headers for every request (e.g. an ``Authorization`` for a gateway).
        max_connections: Most connections open to the service at once.

    Raises:
        ImportError: ``httpx`` is missing (the ``[remote]`` extra installs it; ``[serve]`` does too).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float | None = 60.0,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 100,
    ) -> None:
        require("httpx", "remote", "the LatentRAG service client")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.max_connections = max_connections
        self._io = _IOThread(self)
        self._finalizer = weakref.finalize(self, self._io.close)
        self._info: dict[str, Any] | None = None
        self._config: LatentRAGConfig | None = None

    # ------------------------------------------------------------------ what it serves
    def health(self) -> dict[str, Any]:
        """``GET /health``: a replica's state (``status``: ``ready`` or ``busy``) and what it
        serves (``model``, ``encoder``, ``store``, ``engine``).

        Raises:
            ServiceUnavailable: The service is down or not ready.
            ServiceError: It answered an error.
        """
        info = self._io.run(self._get("/health")).result()
        self._info = info
        return info

    def _served(self) -> dict[str, Any]:
        return self._info if self._info is not None else self.health()

    @property
    def encoder_id(self) -> str:
        """The id of the served model's document tower (read from ``/health`` once)."""
        return str(self._served()["encoder"]["id"])

    @property
    def dim(self) -> int:
        """The dimension of its embeddings (read from ``/health`` once)."""
        return int(self._served()["encoder"]["dim"])

    @property
    def config(self) -> LatentRAGConfig:
        """The served model's config (read from ``/health`` once)."""
        if self._config is None:
            from ..config import LatentRAGConfig

            self._config = LatentRAGConfig.from_dict(self._served()["model"]["config"])
        return self._config

    # ------------------------------------------------------------------ requests
    def submit(self, question: str, **options: Any) -> RequestHandle:
        """Send one question; returns its handle at once (the request streams in the
        background).

        Args:
            question: The question.
            **options: ``top_k``, ``max_steps``, ``min_steps``, ``decode``, ``logit_lens``,
                ``generate_answer``, ``final_thought`` (as ``Engine.submit``).

        Raises:
            ValueError: An empty question, or an unknown or bad option (nothing is sent).
        """
        body = _body(question, options)
        handle = RequestHandle()
        future = self._io.run(self._stream(handle, body))

        def cancel() -> None:
            future.cancel()  # closes the HTTP stream: the service cancels the request
            handle.close(None, RequestCancelled("the request was cancelled"))

        handle.on_cancel = cancel
        return handle

    def ask(self, question: str, **options: Any) -> LatentRAGResult:
        """Answer one question (``POST /v1/ask``); same arguments as :meth:`submit`.

        Raises:
            ValueError: A bad question or option (nothing is sent).
            ServiceRequestError: The service refused it as bad.
            ServiceUnavailable: The service is down, timed out, full or stopping.
            ServiceError: Any other error answer (502: its store failed).
        """
        return self._io.run(self._ask(_body(question, options))).result()

    async def aask(self, question: str, **options: Any) -> LatentRAGResult:
        """Async :meth:`ask`, on any event loop; cancelling it closes the request."""
        future = self._io.run(self._ask(_body(question, options)))
        try:
            return await asyncio.wrap_future(future)
        finally:
            future.cancel()  # a no-op once done

    def close(self) -> None:
        """Close the connections and stop the background thread (requests in flight fail; new
        ones raise RuntimeError)."""
        self._finalizer()

    def __enter__(self) -> RemoteLatentRAG:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteLatentRAG({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:  # a copy connects on its own
        return {"url": self.url, "timeout": self.timeout, "headers": self.headers,
                "max_connections": self.max_connections}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        url = state.pop("url")
        self.__init__(url, **state)  # type: ignore[misc]

    # ------------------------------------------------------------------ on the I/O thread
    async def _ask(self, body: dict[str, Any]) -> LatentRAGResult:
        data = await self._call("POST", "/v1/ask", json=body)
        try:
            return parse_result(data)
        except ValueError as exc:
            raise self._not_api(exc) from exc

    async def _get(self, path: str) -> dict[str, Any]:
        return await self._call("GET", path)

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        httpx = require("httpx", "remote")
        try:
            resp = await self._io.client().request(method, self.url + path, **kwargs)
            if resp.status_code != 200:
                raise self._answer_error(resp.status_code, resp.text)
            return resp.json()
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        except json.JSONDecodeError as exc:
            raise self._not_api(exc) from exc

    async def _stream(self, handle: RequestHandle, body: dict[str, Any]) -> None:
        """Stream one request's lines into its handle, ending it with the result or an error."""
        httpx = require("httpx", "remote")
        try:
            client = self._io.client()
            async with client.stream("POST", self.url + "/v1/ask/stream", json=body) as resp:
                if resp.status_code != 200:
                    raise self._answer_error(resp.status_code, (await resp.aread()).decode())
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    item = parse_line(json.loads(line))
                    if isinstance(item, LatentRAGResult):
                        handle.close(item)
                        return
                    if isinstance(item, tuple):
                        raise service_error(self.url, *item)
                    handle.send(item)
            raise ServiceError(
                "the answer ended before its result (did the replica stop?)", url=self.url
            )
        except asyncio.CancelledError:
            raise  # cancel() closed the handle
        except ServiceError as exc:
            handle.close(None, exc)
        except httpx.HTTPError as exc:
            handle.close(None, self._transport_error(exc))
        except (ValueError, KeyError, TypeError) as exc:
            handle.close(None, self._not_api(exc))
        except BaseException as exc:  # never leave a reader waiting
            handle.close(None, exc)
            raise

    # ------------------------------------------------------------------ errors
    def _answer_error(self, status: int, text: str) -> ServiceError:
        try:
            message = str(json.loads(text)["message"])
        except (ValueError, KeyError, TypeError):  # not the API's error: Ray Serve's proxy's
            message = text.strip()[:500] or "(no message)"
            if status >= 500:
                message += " (from Ray Serve, not a replica: did the replica stop?)"
        return service_error(self.url, status, message)

    def _transport_error(self, exc: Exception) -> ServiceError:
        httpx = require("httpx", "remote")
        if isinstance(exc, httpx.TimeoutException):
            return ServiceUnavailable(f"no answer within {self.timeout} s", url=self.url)
        if isinstance(exc, httpx.ConnectError):
            return ServiceUnavailable(f"cannot connect ({exc}); is it running?", url=self.url)
        return ServiceError(f"the connection broke ({type(exc).__name__}: {exc})", url=self.url)

    def _not_api(self, exc: Exception) -> ServiceError:
        return ServiceError(
            f"the answer is not LatentRAG's API ({type(exc).__name__}: {exc})", url=self.url
        )


def _body(question: str, options: dict[str, Any]) -> dict[str, Any]:
    """A request's JSON body, checked as the service checks it (ValueError: one line)."""
    return ask_request({"question": question, **options}).model_dump(exclude_defaults=True)


class _IOThread:
    """A background thread running an event loop and an ``httpx.AsyncClient`` for one
    :class:`RemoteLatentRAG` (started on first use, stopped by :meth:`close`)."""

    def __init__(self, owner: RemoteLatentRAG) -> None:
        self._settings = (owner.timeout, owner.headers, owner.max_connections)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._closed = False

    def run(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run ``coro`` on the I/O loop; its future, cancellable from any thread."""
        with self._lock:
            if self._closed:
                coro.close()
                raise RuntimeError("the RemoteLatentRAG client is closed")
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="latentrag-remote", daemon=True
                )
                self._thread.start()
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def client(self) -> Any:
        """The HTTP client (on the I/O loop only)."""
        if self._client is None:
            httpx = require("httpx", "remote")
            timeout, headers, connections = self._settings
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout),
                headers=headers,
                limits=httpx.Limits(max_connections=connections),
            )
        return self._client

    def close(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._closed = self._loop, self._thread, None, True
        if loop is None or thread is None:
            return
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):  # closing anyway
                asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(5)
            if not thread.is_alive():
                loop.close()

"""What the LangChain and LlamaIndex adapters share: the model they run and its checks.

- :func:`resolve_model`: a ``LatentRAG``, a checkpoint path, or a LatentRAG service
  (``http(s)://...``, served by ``latentrag serve``), which searches its own store.
- :func:`submit`: send questions to the model's engine, or to the service.
- :func:`check_question`: a question's check, with a clear error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .runtime import check_text

if TYPE_CHECKING:
    from .engine import RequestHandle
    from .model import LatentRAG
    from .serve.client import RemoteLatentRAG


def resolve_model(value: Any, *, service: bool = True) -> LatentRAG | RemoteLatentRAG:
    """A ``LatentRAG`` or ``RemoteLatentRAG`` as is; a ``http(s)://`` URL as a
    ``RemoteLatentRAG``; another string or path loaded with ``LatentRAG.from_pretrained``.

    Args:
        value: What the user passed as ``model``.
        service: Whether a service will do (embeddings need the model itself).
    """
    from .model import LatentRAG

    url = is_service_url(value)
    if not service and (url or is_remote(value)):
        raise TypeError(
            "embeddings need the model itself (a LatentRAG or a checkpoint path): a LatentRAG "
            "service answers questions, it does not embed texts"
        )
    if isinstance(value, LatentRAG) or is_remote(value):
        return value
    if url:
        from .serve.client import RemoteLatentRAG

        return RemoteLatentRAG(value)
    if isinstance(value, (str, os.PathLike)):
        return LatentRAG.from_pretrained(value)
    raise TypeError(
        "model must be a LatentRAG, a checkpoint path or a LatentRAG service URL, not "
        f"{type(value).__name__}"
    )


def is_service_url(value: Any) -> bool:
    """Whether ``value`` is a LatentRAG service's URL (``http(s)://...``)."""
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def is_remote(model: Any) -> bool:
    """Whether ``model`` is a LatentRAG service (``RemoteLatentRAG``; its module is loaded
    once there is one, and not imported here otherwise)."""
    client = sys.modules.get(f"{__package__}.serve.client")
    return client is not None and isinstance(model, client.RemoteLatentRAG)


def submit(
    model: LatentRAG | RemoteLatentRAG,
    questions: Sequence[str],
    searches: Sequence[Callable[..., Any]],
    **options: Any,
) -> list[RequestHandle]:
    """Send ``questions`` to ``model``'s engine with their search functions, or to a service
    (which searches its own store: the search functions are not used)."""
    if is_remote(model):
        return [model.submit(q, **options) for q in questions]
    return model.engine.submit_many(list(questions), list(searches), **options)


def check_question(question: Any, owner: str = "LatentRAG") -> str:
    """Return ``question`` if it is a non-empty string, else raise a clear ValueError."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{owner} got an empty question ({question!r}): ask a non-empty question")
    check_text(question, f"{owner}'s question")
    return question


__all__ = ["check_question", "is_remote", "is_service_url", "resolve_model", "submit"]

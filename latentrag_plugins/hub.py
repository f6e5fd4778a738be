"""Loading from the Hugging Face Hub quietly, and without hanging when it cannot be reached.

``huggingface_hub`` retries a hub it cannot reach for about a minute per file, printing each
retry. Before a model is loaded by hub id, :func:`check_hub_source` asks once per process
whether the hub answers (a plain TCP connect, a few seconds at most). If it does not, the hub
client switches to offline mode, so cached copies load at once, and a model that is not
cached fails with one message that says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from .errors import CheckpointError

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_REACHABLE: dict[str, bool] = {}  # endpoint -> whether it answered
CONNECT_TIMEOUT_S = 3.0


def endpoint() -> str:
    """The hub's address (``HF_ENDPOINT``, else huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether the hub accepts a connection (asked once per process and endpoint)."""
    url = endpoint()
    with _LOCK:
        if url not in _REACHABLE:
            parsed = urlparse(url)
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            try:
                socket.create_connection((parsed.hostname or "", port), timeout).close()
                _REACHABLE[url] = True
            except OSError:
                _REACHABLE[url] = False
        return _REACHABLE[url]


def check_hub_source(name: str, what: str) -> None:
    """Before loading ``name``: nothing to do for a local directory or in offline mode; a hub id
    needs the hub, or else a cached copy (the hub client then goes offline, reading the cache).

    Raises:
        CheckpointError: The hub cannot be reached and ``name`` is not in the local cache.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    if Path(name).expanduser().exists() or constants.HF_HUB_OFFLINE:
        return
    if hub_reachable():
        return
    host = urlparse(endpoint()).hostname
    if not constants.HF_HUB_OFFLINE:
        log.warning(
            "cannot reach the Hugging Face Hub (%s): loading from the local cache only", host
        )
        constants.HF_HUB_OFFLINE = True
    if not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise CheckpointError(
            f"{what} {name!r}: the Hugging Face Hub ({host}) cannot be reached and no copy is in "
            "the local cache; connect to the network, or pass a local directory"
        )


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars from ``transformers``' loads inside the block (a library call shows
    none; the command line shows its own on long work)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()

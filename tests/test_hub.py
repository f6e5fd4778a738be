"""Without a connection to the Hugging Face Hub, a hub id fails at once with one clear message,
and a cached copy loads from the cache (no minute of retries)."""

from __future__ import annotations

import time

import pytest
from huggingface_hub import constants

from latentrag_plugins import hub
from latentrag_plugins.errors import CheckpointError


def test_an_unreachable_hub_fails_fast_or_reads_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda name, file: None)
    t0 = time.perf_counter()
    with pytest.raises(
        CheckpointError, match="cannot be reached and no copy is in the local cache"
    ):
        hub.check_hub_source("Qwen/Qwen2.5-7B", "base model")
    assert time.perf_counter() - t0 < 5 and constants.HF_HUB_OFFLINE  # offline from now on
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda name, f: "/cache/x")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.check_hub_source("Qwen/Qwen2.5-7B", "base model")  # cached: the cache serves it
    assert constants.HF_HUB_OFFLINE
    hub.check_hub_source(str(tmp_path), "base model")  # a local directory needs no hub


def test_the_probe_answers_once_per_endpoint(monkeypatch):
    calls = []

    def connect(address, timeout):
        calls.append(address)
        raise OSError("no route")

    monkeypatch.setattr(hub.socket, "create_connection", connect)
    monkeypatch.setattr(hub, "_REACHABLE", {})
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example:8443")
    assert not hub.hub_reachable() and not hub.hub_reachable()
    assert calls == [("hub.example", 8443)]


def test_loading_a_model_prints_no_progress_bar(model, tmp_path, capfd):
    """Even where transformers shows its bars (here they are off for the whole test run)."""
    from transformers.utils import logging as hf_logging

    from latentrag_plugins import LatentRAG

    model.save_pretrained(tmp_path / "m")
    capfd.readouterr()
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        LatentRAG.from_pretrained(tmp_path / "m", device="cpu")
    finally:
        if not shown:
            hf_logging.disable_progress_bar()
    out = capfd.readouterr()
    assert "Loading weights" not in out.err + out.out and "%|" not in out.err

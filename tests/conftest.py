"""Shared fixtures: an offline tokenizer, tiny random LLMs (Qwen2 and Llama shapes), the real
all-MiniLM-L6-v2 retriever, and a FAISS store over the example corpus."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Tiny models are dominated by per-op overhead; one intra-op thread avoids oversubscription
# (5-30x faster on a busy 2-core machine, no slower on an idle one).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    from latentrag_plugins.model_zoo import build_tokenizer

    return build_tokenizer()


def make_model(tokenizer, shape: str = "tiny", **config):
    import copy

    from latentrag_plugins import LatentRAG
    from latentrag_plugins.model_zoo import build_llm

    tok = copy.deepcopy(tokenizer)
    llm = build_llm(shape, vocab_size=len(tok), seed=1)
    return LatentRAG.init(llm, tokenizer=tok, device="cpu", **config)


@pytest.fixture(scope="session", params=["tiny", "tiny-llama"])
def any_model(request, tokenizer):
    """A tiny untrained LatentRAG, once per LLM shape (Qwen2, Llama)."""
    return make_model(tokenizer, request.param)


@pytest.fixture(scope="session")
def model(tokenizer):
    """A tiny untrained Qwen2-shaped LatentRAG with the real MiniLM retriever."""
    return make_model(tokenizer, "tiny")


@pytest.fixture(scope="session")
def store(model):
    """A FAISS store over examples/corpus.jsonl, built with the model's document tower."""
    from latentrag_plugins.store.corpus import read_corpus
    from latentrag_plugins.store.faiss_store import FaissStore

    return FaissStore.build(
        model.doc_tower, read_corpus(EXAMPLES / "corpus.jsonl"), show_progress=False
    )


class ForceActions:
    """LM-head hook that forces the action at the last thought slot.

    ``mode="retrieve"`` always retrieves; ``"answer"`` always answers; ``"hidden"`` decides by a
    fixed random projection of the state's offset from a reference state, so the choice depends
    on the state (same in batched and one-by-one runs) and differs across questions and steps.
    """

    def __init__(self, model, mode: str = "retrieve") -> None:
        self.model, self.mode = model, mode
        self.handle = None

    def _hook(self, module, args, out):
        ids = self.model.ids
        h = args[0]
        if self.mode == "hidden":
            sign = torch.sign(
                (h.float() - self.h0.to(h.device)) @ self.direction.to(h.device) + 1e-6
            )
        else:
            sign = torch.ones(h.shape[:-1], device=h.device) * (
                1 if self.mode == "retrieve" else -1
            )
        out = out.clone()
        out[..., ids.query[0]] += (1000 * sign).to(out.dtype)
        out[..., ids.answer] -= (1000 * sign).to(out.dtype)
        return out

    def __enter__(self):
        if self.mode == "hidden":
            from latentrag_plugins.context import BatchedContext

            m = self.model
            with torch.inference_mode():
                ctx = BatchedContext(m.llm, 1, m.ids.pad)
                ref = m.prompts.question("reference") + m.prompts.think_slots()
                self.h0 = ctx.feed([ref])[0, -1].float()  # (d,)
            gen = torch.Generator().manual_seed(1)
            self.direction = torch.randn(m.llm.config.hidden_size, generator=gen)  # (d,)
        self.handle = self.model.llm.get_output_embeddings().register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture
def force():
    return ForceActions


def trace(results) -> list:
    """What a run decided, per question: actions, retrieved ids per step, and the answer."""
    return [
        ([s.action for s in r.steps], [[d.id for d in s.docs] for s in r.steps], r.answer)
        for r in results
    ]


def pace_tokens(monkeypatch, seconds: float) -> dict:
    """Make the engine generate an answer token every ``seconds``; the returned dict fills with
    the tokens each request generated, in request order."""
    import time

    from latentrag_plugins.engine.answer_text import AnswerText

    add, written = AnswerText.add, {}

    def paced(self, token: int) -> None:
        time.sleep(seconds)
        add(self, token)
        written.setdefault(self, []).append(token)

    monkeypatch.setattr(AnswerText, "add", paced)
    return written


@contextlib.contextmanager
def served_on_localhost(app):
    """Serve an ASGI app with uvicorn in this process on a free local port; yields its URL."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)

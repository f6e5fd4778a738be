"""The LangChain integration: embeddings, retriever, chain, events, stores and errors.

A tiny random LatentRAG with the real MiniLM retriever is built once for this module; the
``ForceActions`` hook (conftest) makes it retrieve on every step where a test needs that.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
from typing import Any
from uuid import UUID

import numpy as np
import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore  # noqa: E402

from latentrag_plugins.errors import EncoderMismatchError, StoreError  # noqa: E402
from latentrag_plugins.langchain import (  # noqa: E402
    LatentRAGChain,
    LatentRAGEmbeddings,
    LatentRAGRetriever,
)
from latentrag_plugins.store.corpus import read_corpus  # noqa: E402
from tests.conftest import EXAMPLES, ForceActions, make_model, pace_tokens  # noqa: E402

Q = "In which country was Marie Curie born?"
COUNTS = ("forward_passes", "input_tokens", "output_tokens")
STEP, THOUGHT, TOKEN = "latentrag_step", "latentrag_thought", "latentrag_token"


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lc_model(tokenizer):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: thread start-up and contention cost more than it saves
    yield make_model(tokenizer, "tiny")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def emb(lc_model):
    return LatentRAGEmbeddings(model=lc_model)


@pytest.fixture(scope="module")
def docs():
    return [
        Document(id=d.id, page_content=d.text, metadata={"source": f"corpus/{d.id}"})
        for d in read_corpus(EXAMPLES / "corpus.jsonl")
    ]


@pytest.fixture(scope="module")
def vs(emb, docs):
    return InMemoryVectorStore.from_documents(docs, emb)


@pytest.fixture(scope="module")
def faiss_vs(emb, docs):
    FAISS = pytest.importorskip("langchain_community.vectorstores").FAISS  # noqa: N806

    return FAISS.from_documents(docs, emb)


@pytest.fixture(scope="module")
def qdrant_vs(emb, docs):
    QdrantVectorStore = pytest.importorskip("langchain_qdrant").QdrantVectorStore  # noqa: N806

    plain = [Document(page_content=d.page_content, metadata=d.metadata) for d in docs]
    return QdrantVectorStore.from_documents(
        plain, emb, location=":memory:", collection_name="corpus"
    )


@pytest.fixture
def retrieving(lc_model):
    with ForceActions(lc_model, "retrieve"):
        yield


class Recorder(BaseCallbackHandler):
    """Collects custom events and retriever errors."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], UUID]] = []
        self.errors: list[BaseException] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data, run_id))

    def on_retriever_error(self, error: BaseException, **kwargs: Any) -> None:
        self.errors.append(error)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [d for n, d, _ in self.events if n == name]


class AsyncOnlyStore(InMemoryVectorStore):
    """A store whose sync by-vector search raises: only a native async path can pass."""

    loop_threads: list[int]

    def similarity_search_with_score_by_vector(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sync search called")

    def similarity_search_by_vector(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sync search called")

    async def asimilarity_search_by_vector(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("score-less async search called")

    async def asimilarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        self.loop_threads.append(threading.get_ident())
        await asyncio.sleep(0)
        hits = self._similarity_search_with_score_by_vector(embedding, k)
        return [(d, s) for d, s, _ in hits]


class FlakyStore(InMemoryVectorStore):
    """Fails on the second search."""

    calls = 0

    def similarity_search_with_score_by_vector(self, *args: Any, **kwargs: Any) -> Any:
        type(self).calls += 1
        if type(self).calls == 2:
            raise ConnectionError("store went away")
        return super().similarity_search_with_score_by_vector(*args, **kwargs)


class TextOnlyStore(VectorStore):
    """A store that can only search by text."""

    def add_texts(self, texts: Any, metadatas: Any = None, **kwargs: Any) -> list[str]:
        return []

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return []

    @classmethod
    def from_texts(cls, texts: Any, embedding: Any, metadatas: Any = None, **kwargs: Any) -> Any:
        return cls()


def store_of(cls: type[InMemoryVectorStore], emb: LatentRAGEmbeddings, docs: list[Document]):
    store = cls(emb)
    store.add_documents(docs)
    return store


# ---------------------------------------------------------------------------------- packaging
def test_import_latentrag_does_not_import_langchain():
    code = (
        "import sys, latentrag_plugins; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0].startswith('langchain')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_langchain_core_names_the_extra(monkeypatch):
    for name in list(sys.modules):
        if name.startswith("latentrag_plugins.langchain"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    with pytest.raises(ImportError, match=r"latentrag-plugins\[langchain\]"):
        import latentrag_plugins.langchain  # noqa: F401


# ---------------------------------------------------------------------------------- embeddings
def test_embeddings_are_the_document_tower(lc_model, emb):
    texts = ["Marie Curie", "Warsaw is the capital of Poland."]
    got = emb.embed_documents(texts)
    assert isinstance(got[0][0], float) and len(got[0]) == lc_model.dim == emb.dim
    np.testing.assert_allclose(got, lc_model.embed_documents(texts), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb.embed_query(Q), lc_model.embed_query(Q), rtol=1e-5, atol=1e-6)
    assert emb.encoder_id == emb.model_name == lc_model.encoder_id
    assert emb.embed_documents([]) == []


@pytest.mark.asyncio
async def test_async_embeddings_run_off_the_event_loop(emb, monkeypatch):
    threads: list[int] = []
    real = emb.model.embed_documents
    monkeypatch.setattr(
        emb.model,
        "embed_documents",
        lambda *a, **k: threads.append(threading.get_ident()) or real(*a, **k),
    )
    got = await emb.aembed_documents(["a", "b"])
    assert len(got) == 2 and threads and threads[0] != threading.get_ident()
    assert len(await emb.aembed_query("a")) == emb.dim


def test_model_can_be_a_checkpoint_path(lc_model, tmp_path, vs):
    lc_model.save_pretrained(tmp_path / "ckpt")
    emb = LatentRAGEmbeddings(model=str(tmp_path / "ckpt"))
    assert emb.encoder_id == lc_model.encoder_id
    # the same tower (loaded in the default dtype: bfloat16 on CPUs that multiply it natively)
    assert float(np.dot(emb.embed_query(Q), lc_model.embed_query(Q))) > 0.999
    retriever = LatentRAGRetriever(model=emb.model, vectorstore=vs)
    assert retriever.model is emb.model
    with pytest.raises(TypeError, match="LatentRAG, a checkpoint path or a LatentRAG service URL"):
        LatentRAGEmbeddings(model=42)


# ---------------------------------------------------------------------------------- retriever
def test_step_settings_default_to_the_models_config(lc_model, vs, monkeypatch):
    monkeypatch.setattr(lc_model.config, "top_k", 5)
    monkeypatch.setattr(lc_model.config, "max_steps", 2)
    r = LatentRAGRetriever(model=lc_model, vectorstore=vs)
    c = LatentRAGChain(model=lc_model, vectorstore=vs)
    assert (r.top_k, r.max_steps, c.top_k, c.max_steps) == (5, 2, 5, 2)
    monkeypatch.setattr(lc_model.config, "max_steps", 0)
    assert LatentRAGRetriever(model=lc_model, vectorstore=vs).max_steps == 1  # it always searches
    assert LatentRAGChain(model=lc_model, vectorstore=vs).max_steps == 0


def test_title_metadata_leads_the_text_the_model_reads():
    """As in the LlamaIndex adapter: a store's ``title`` metadata field is the document's title
    line, unless its text already starts with it."""
    from latentrag_plugins.langchain._run import as_retrieved as _as_retrieved

    hits = [
        (Document(page_content="Born in Warsaw.", metadata={"title": "Marie Curie"}), 0.9),
        (
            Document(
                page_content="Marie Curie\nBorn in Warsaw.", metadata={"title": "Marie Curie"}
            ),
            0.8,
        ),
        (Document(page_content="Warsaw\nA city.", metadata={1: "x"}), None),  # any key type
    ]
    docs = _as_retrieved(hits)
    assert [d.title for d in docs] == ["Marie Curie", "Marie Curie", "Warsaw"]
    assert [d.body for d in docs] == ["Born in Warsaw.", "Born in Warsaw.", "A city."]
    assert docs[0].metadata == {"title": "Marie Curie"} and math.isnan(docs[2].score)
    assert docs[2].metadata == {"1": "x"}


def test_retriever_returns_union_in_step_then_rank_order(lc_model, vs, retrieving):
    rec = Recorder()
    r = LatentRAGRetriever(model=lc_model, vectorstore=vs, k=20, top_k=3, max_steps=3)
    got = r.invoke(Q, config={"callbacks": [rec]})
    steps = rec.named(STEP)
    assert [s["action"] for s in steps] == ["retrieve"] * 3 + ["answer"]
    assert steps[-1]["forced"] and steps[-1]["document_ids"] == []
    expected, seen = [], set()
    for s in steps[:-1]:
        assert len(s["document_ids"]) == 3 and s["scores"] == sorted(s["scores"], reverse=True)
        for rank, (i, score) in enumerate(zip(s["document_ids"], s["scores"])):
            if i not in seen:
                seen.add(i)
                expected.append((i, s["step"], rank, score))
    got_meta = [
        (
            d.id,
            d.metadata["latentrag_step"],
            d.metadata["latentrag_rank"],
            d.metadata["latentrag_score"],
        )
        for d in got
    ]
    assert got_meta == expected
    for d in got:  # ids and store metadata carried through; no subquery without decode
        assert d.metadata["source"] == f"corpus/{d.id}" and "latentrag_subquery" not in d.metadata
        assert d.page_content == vs.get_by_ids([d.id])[0].page_content


def test_retriever_k_cut_and_invoke_override(lc_model, vs, retrieving):
    r = LatentRAGRetriever(model=lc_model, vectorstore=vs, k=2, top_k=3, max_steps=3)
    union = [d.id for d in r.invoke(Q, k=100)]
    assert len(union) >= 4  # at least the 3 of step 0 and one new one
    assert [d.id for d in r.invoke(Q)] == union[:2]
    assert [d.id for d in r.invoke(Q, k=4)] == union[:4]
    assert len(r.invoke(Q, k=10, top_k=1, max_steps=1)) == 1


def test_retriever_searches_with_the_latent_query_embedding(lc_model, vs, retrieving):
    """The store finds what the core loop finds over the embedded FAISS store."""
    from latentrag_plugins.store.faiss_store import FaissStore

    core_store = FaissStore.build(
        lc_model.doc_tower, read_corpus(EXAMPLES / "corpus.jsonl"), show_progress=False
    )
    res = lc_model.run(Q, core_store, max_steps=2, top_k=3, generate_answer=False)
    rec = Recorder()
    LatentRAGRetriever(model=lc_model, vectorstore=vs, max_steps=2).invoke(
        Q, config={"callbacks": [rec]}
    )
    core_ids = [[d.id for d in s.docs] for s in res.steps if s.action == "retrieve"]
    assert [s["document_ids"] for s in rec.named(STEP)][:2] == core_ids


def test_retriever_takes_at_least_one_step(lc_model, vs):
    rec = Recorder()
    with ForceActions(lc_model, "answer"):
        got = LatentRAGRetriever(model=lc_model, vectorstore=vs, k=10).invoke(
            Q, config={"callbacks": [rec]}
        )
    assert [(s["step"], s["action"]) for s in rec.named(STEP)] == [(0, "retrieve"), (1, "answer")]
    assert len(got) == 3 and {d.metadata["latentrag_step"] for d in got} == {0}


def test_decode_adds_thoughts_and_subqueries(lc_model, vs, retrieving):
    rec = Recorder()
    r = LatentRAGRetriever(model=lc_model, vectorstore=vs, max_steps=2, decode=True)
    got = r.invoke(Q, config={"callbacks": [rec]})
    thoughts = rec.named(THOUGHT)
    assert [t["step"] for t in thoughts] == [s["step"] for s in rec.named(STEP)] == [0, 1, 2]
    assert all(isinstance(t["thought"], str) for t in thoughts)
    assert [t["subquery"] is None for t in thoughts] == [False, False, True]
    by_step = {t["step"]: t["subquery"] for t in thoughts}
    assert all(
        d.metadata["latentrag_subquery"] == by_step[d.metadata["latentrag_step"]] for d in got
    )


def test_ls_params_and_tags_name_store_and_embedding(lc_model, vs):
    r = LatentRAGRetriever(model=lc_model, vectorstore=vs)
    params = r._get_ls_params()
    assert params["ls_vector_store_provider"] == "InMemoryVectorStore"
    assert params["ls_embedding_provider"] == "LatentRAGEmbeddings"
    assert r.tags == ["InMemoryVectorStore", "LatentRAGEmbeddings"]


def test_search_kwargs_reach_the_store(lc_model, vs, retrieving):
    keep = {"d0", "d1", "d2", "d3"}
    r = LatentRAGRetriever(
        model=lc_model, vectorstore=vs, k=10, search_kwargs={"filter": lambda d: d.id in keep}
    )
    assert {d.id for d in r.invoke(Q)} <= keep
    assert {d.id for d in r.invoke(Q, filter=lambda d: d.id == "d5")} == {"d5"}
    for cls in (LatentRAGRetriever, LatentRAGChain):  # as_retriever's k has its own fields
        with pytest.raises(ValueError, match="top_k"):
            cls(model=lc_model, vectorstore=vs, search_kwargs={"k": 4})


# ---------------------------------------------------------------------------------- stores
@pytest.mark.parametrize(
    ("store", "higher_is_better"),
    [("vs", True), ("faiss_vs", False), ("qdrant_vs", True)],
    ids=["in-memory-cosine", "faiss-l2-distance", "qdrant-cosine"],
)
def test_production_stores_and_score_direction(
    lc_model, request, store, higher_is_better, retrieving
):
    """InMemoryVectorStore and Qdrant (cosine) return similarities, higher is better; the
    community FAISS store (EUCLIDEAN_DISTANCE) returns L2 distances, lower is better."""
    vs = request.getfixturevalue(store)
    rec = Recorder()
    got = LatentRAGRetriever(model=lc_model, vectorstore=vs, k=6, max_steps=2).invoke(
        Q, config={"callbacks": [rec]}
    )
    assert len(got) >= 3
    for s in rec.named(STEP)[:2]:
        assert all(isinstance(x, float) for x in s["scores"])
        assert s["scores"] == sorted(s["scores"], reverse=higher_is_better)
        assert all(i is not None for i in s["document_ids"])  # Qdrant: metadata["_id"]
    for d in got:
        assert d.metadata["source"].startswith("corpus/")
    first = rec.named(STEP)[0]
    assert [d.metadata["latentrag_score"] for d in got[:3]] == first["scores"]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", ["vs", "faiss_vs", "qdrant_vs"])
async def test_async_equals_sync(lc_model, request, store):
    vs = request.getfixturevalue(store)
    r = LatentRAGRetriever(model=lc_model, vectorstore=vs, k=6, max_steps=2)
    with ForceActions(lc_model, "retrieve"):
        sync, asyn = r.invoke(Q), await r.ainvoke(Q)
    assert [d.id for d in sync] == [d.id for d in asyn]
    assert [d.page_content for d in sync] == [d.page_content for d in asyn]
    if store != "vs":  # InMemoryVectorStore's native async search gives no scores
        assert [d.metadata for d in sync] == [d.metadata for d in asyn]


def test_store_documents_are_not_mutated(lc_model, faiss_vs, retrieving):
    LatentRAGRetriever(model=lc_model, vectorstore=faiss_vs, max_steps=1).invoke(Q)
    assert all(set(d.metadata) == {"source"} for d in faiss_vs.docstore._dict.values())


@pytest.mark.asyncio
async def test_async_paths_really_run_async(lc_model, emb, docs):
    store = store_of(AsyncOnlyStore, emb, docs)
    store.loop_threads = []
    r = LatentRAGRetriever(model=lc_model, vectorstore=store, k=6, max_steps=2)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    with ForceActions(lc_model, "retrieve"):
        got = await r.ainvoke(Q)
        out = await LatentRAGChain(model=lc_model, vectorstore=store, max_steps=2).ainvoke(Q)
    done.set()
    await task
    assert len(got) >= 3 and [d.id for d in out["source_documents"]][: len(got)] == [
        d.id for d in got
    ]
    assert set(store.loop_threads) == {threading.get_ident()}  # awaited on the event loop
    assert ticks > 50  # forward passes ran in a worker thread, the loop stayed free
    with pytest.raises(StoreError, match="AsyncOnlyStore.similarity_search_with_score_by_vector"):
        r.invoke(Q)


@pytest.mark.asyncio
async def test_cancelled_call_leaves_the_model_usable(lc_model, vs, retrieving):
    r = LatentRAGRetriever(model=lc_model, vectorstore=vs, max_steps=4)
    task = asyncio.create_task(r.ainvoke(Q))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(await r.ainvoke(Q, max_steps=1)) == 3


def _finishes(main: Any, seconds: float = 120) -> Any:
    """Run ``asyncio.run(main())`` in a thread; fail (instead of hanging) if it deadlocks."""
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(value=asyncio.run(main())), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the event loop deadlocked"
    return out["value"]


def test_concurrent_and_cancelled_chain_calls_do_not_deadlock(lc_model, vs):
    """Concurrent async calls, one cancelled at its first answer token, each get their own
    answer, and the model serves the next call."""
    import copy

    from langchain_core.callbacks import AsyncCallbackHandler

    model = copy.deepcopy(lc_model)  # its own engine: a deadlock here cannot stall other tests
    chain = LatentRAGChain(model=model, vectorstore=vs, max_steps=2)
    questions = [Q, "Who was Pierre Curie?", "Where is Warsaw?", "What is the Vistula?"] * 2
    want = [chain.invoke(q)["answer"] for q in questions]

    class CancelOnFirstToken(AsyncCallbackHandler):
        task: asyncio.Task | None = None

        async def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            if name == TOKEN and self.task is not None:
                self.task.cancel()

    async def main() -> tuple[list[str], str]:
        outs = await asyncio.gather(*(chain.ainvoke(q) for q in questions))
        handler = CancelOnFirstToken()
        handler.task = asyncio.ensure_future(chain.ainvoke(Q, {"callbacks": [handler]}))
        with pytest.raises(asyncio.CancelledError):
            await handler.task
        return [o["answer"] for o in outs], (await chain.ainvoke(Q))["answer"]

    got, after = _finishes(main)
    assert got == want and after == want[0]


@pytest.mark.parametrize("slow_handler", [False, True])
def test_a_cancelled_call_stops_its_answer_at_the_next_token(
    lc_model, vs, monkeypatch, slow_handler
):
    """The tiny model writes its full 32 answer tokens; cancelled at the first, it writes only
    the tokens already under way (the engine drops the request at its next pass), and none of
    them reaches a callback once the call has ended, even when the handler was slow to cancel.
    Each token is paced at 50 ms, so the count does not hang on how fast a busy machine's event
    loop sees the cancellation."""
    import copy

    from langchain_core.callbacks import AsyncCallbackHandler

    model = copy.deepcopy(lc_model)
    chain = LatentRAGChain(model=model, vectorstore=vs, max_steps=2)
    assert chain.invoke(Q)["output_tokens"] == model.config.max_answer_tokens
    written = pace_tokens(monkeypatch, 0.05)

    class CancelOnFirstToken(AsyncCallbackHandler):
        task: asyncio.Task | None = None
        ended = False
        tokens = late = 0

        async def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            if name == TOKEN:
                self.tokens += 1
                self.late += self.ended
                if self.task is not None and not self.task.done():
                    if slow_handler:  # the worker queues more tokens meanwhile
                        await asyncio.sleep(0.3)
                    self.task.cancel()

    handler = CancelOnFirstToken()

    async def main() -> None:
        handler.task = asyncio.ensure_future(chain.ainvoke(Q, {"callbacks": [handler]}))
        with pytest.raises(asyncio.CancelledError):
            await handler.task
        handler.ended = True
        await chain.ainvoke(Q)
        await asyncio.sleep(0.05)

    _finishes(main)
    cancelled, after = written.values()  # in call order
    assert 1 <= len(cancelled) <= (12 if slow_handler else 3)
    assert len(after) == model.config.max_answer_tokens
    assert handler.tokens >= 1 and handler.late == 0


@pytest.mark.parametrize("streamed", [False, True])
def test_a_raising_token_handler_fails_the_call_and_ends_its_answer(
    lc_model, vs, monkeypatch, streamed
):
    """A handler with ``raise_error`` that raises on an answer token fails the async call with
    its own error, the answer ends at the next token rather than running to its end, and the
    model serves the next call. Tokens are paced at 20 ms, so a fast worker cannot finish the
    answer before the event loop has seen the error."""
    import copy

    from langchain_core.callbacks import AsyncCallbackHandler

    model = copy.deepcopy(lc_model)
    chain = LatentRAGChain(model=model, vectorstore=vs, max_steps=2)
    written = pace_tokens(monkeypatch, 0.02)

    class Boom(RuntimeError):
        pass

    class RaiseOnSecondToken(AsyncCallbackHandler):
        raise_error = True
        tokens = 0

        async def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            if name == TOKEN:
                self.tokens += 1
                if self.tokens == 2:
                    raise Boom("handler failed")

    handler = RaiseOnSecondToken()

    async def main() -> str:
        config = {"callbacks": [handler]}
        with pytest.raises(Boom):
            if streamed:
                async for _ in chain.astream(Q, config):
                    pass
            else:
                await chain.ainvoke(Q, config)
        return (await chain.ainvoke(Q))["answer"]

    after = _finishes(main)
    failed, next_call = written.values()  # in call order
    assert handler.tokens == 2 and 2 <= len(failed) <= 8
    assert len(next_call) == model.config.max_answer_tokens
    assert after == chain.invoke(Q)["answer"]


def test_many_concurrent_calls_with_plain_handlers_stream_every_token_in_order(lc_model, vs):
    """A plain (sync) callback handler runs in the event loop's default thread pool: with more
    concurrent calls than its threads (os.cpu_count() + 4), every answer token still arrives,
    whole and in order, before its call returns."""
    import copy
    import os

    from langchain_core.callbacks import BaseCallbackHandler

    model = copy.deepcopy(lc_model)  # its own engine: a deadlock here cannot stall other tests
    chain = LatentRAGChain(model=model, vectorstore=vs, max_steps=2)

    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.texts: list[str] = []

        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            if name == TOKEN:
                self.texts.append(data["text"])

    n = (os.cpu_count() or 1) + 6
    handlers = [Tokens() for _ in range(n)]
    questions = [f"Where was person {i} born?" for i in range(n)]

    async def main() -> list[dict[str, Any]]:
        calls = (chain.ainvoke(q, {"callbacks": [h]}) for q, h in zip(questions, handlers))
        return list(await asyncio.gather(*calls))

    outs = _finishes(main, seconds=60)
    for out, handler in zip(outs, handlers):
        assert handler.texts and "".join(handler.texts).strip() == out["answer"]


# ---------------------------------------------------------------------------------- chain
def test_chain_output_and_inputs(lc_model, vs, retrieving):
    chain = LatentRAGChain(model=lc_model, vectorstore=vs, top_k=2, max_steps=2)
    out = chain.invoke(Q)
    assert set(out) == {"answer", "source_documents", "steps", "timings_ms", "batch_size", *COUNTS}
    assert isinstance(out["answer"], str) and out["answer"]
    assert [s["action"] for s in out["steps"]] == ["retrieve", "retrieve", "answer"]
    ids = [i for s in out["steps"] for i in s["document_ids"]]
    assert [d.id for d in out["source_documents"]] == list(dict.fromkeys(ids))
    assert out["timings_ms"]["total"] > 0
    ref = lc_model.run(Q, _InMemoryAsCoreStore(vs), max_steps=2, top_k=2)
    assert out["answer"] == ref.answer
    assert [out[k] for k in COUNTS] == [getattr(ref, k) for k in COUNTS]
    for form in ({"question": Q}, {"input": Q, "chat_history": []}, {"query": Q}):
        assert chain.invoke(form)["answer"] == out["answer"]


def test_live_decoding_equals_the_core_batched_decoding(lc_model, vs, retrieving):
    out = LatentRAGChain(model=lc_model, vectorstore=vs, max_steps=2, decode=True).invoke(Q)
    ref = lc_model.run(Q, _InMemoryAsCoreStore(vs), max_steps=2, decode=True)
    assert [(s["thought"], s["subquery"]) for s in out["steps"]] == [
        (s.thought, s.subquery) for s in ref.steps
    ]
    assert out["answer"] == ref.answer
    assert out["timings_ms"]["decode"] > 0


class _InMemoryAsCoreStore:
    """The core ``search(embedding, k)`` protocol over an InMemoryVectorStore (for a reference)."""

    def __init__(self, vs: InMemoryVectorStore) -> None:
        self.vs = vs

    def search(self, embedding: np.ndarray, k: int) -> list:
        from latentrag_plugins.results import RetrievedDoc

        hits = self.vs.similarity_search_with_score_by_vector(embedding.tolist(), k=k)
        return [RetrievedDoc(id=d.id, text=d.page_content, score=s) for d, s in hits]


def test_chain_batch_shares_forward_passes(lc_model, vs, retrieving):
    chain = LatentRAGChain(model=lc_model, vectorstore=vs, max_steps=1)
    questions = [Q, "Who was Pierre Curie?", "What is the capital of Poland?"]
    batched = chain.batch(questions)
    assert all(b["batch_size"] > 1 for b in batched)
    single = [chain.invoke(q) for q in questions]
    for b, s in zip(batched, single):
        assert b["answer"] == s["answer"]
        assert [d.id for d in b["source_documents"]] == [d.id for d in s["source_documents"]]
    too_long = "Where was he born? " * lc_model.config.max_context_tokens
    mixed = chain.batch([Q, "  ", too_long], return_exceptions=True)
    assert isinstance(mixed[1], ValueError) and mixed[0]["answer"] == single[0]["answer"]
    assert isinstance(mixed[2], ValueError) and "too long" in str(mixed[2])


@pytest.mark.asyncio
async def test_chain_abatch_events_go_to_each_run(lc_model, vs, retrieving):
    recs = [Recorder(), Recorder()]
    chain = LatentRAGChain(model=lc_model, vectorstore=vs, max_steps=1)
    outs = await chain.abatch([Q, "Who was Pierre Curie?"], [{"callbacks": [r]} for r in recs])
    for out, rec in zip(outs, recs):
        assert [s["document_ids"] for s in rec.named(STEP)] == [
            s["document_ids"] for s in out["steps"]
        ]
        assert len(rec.named(TOKEN)) >= 1


def test_chain_stream_yields_steps_then_answer(lc_model, vs, retrieving):
    chain = LatentRAGChain(model=lc_model, vectorstore=vs, max_steps=2)
    chunks = list(chain.stream(Q))
    assert [c["step"]["action"] for c in chunks[:-1]] == ["retrieve", "retrieve", "answer"]
    final = chunks[-1]
    ref = chain.invoke(Q)
    assert final["answer"] == ref["answer"]
    assert [c["step"] for c in chunks[:-1]] == final["steps"]
    assert [d.id for d in final["source_documents"]] == [d.id for d in ref["source_documents"]]
    assert (chain | (lambda out: out["answer"])).invoke(Q) == ref["answer"]


@pytest.mark.asyncio
async def test_chain_astream_and_astream_events(lc_model, vs, retrieving):
    chain = LatentRAGChain(model=lc_model, vectorstore=vs, max_steps=2, decode=True)
    chunks = [c async for c in chain.astream({"question": Q})]
    assert len(chunks) == 4 and "answer" in chunks[-1]
    events = [e async for e in chain.astream_events(Q, version="v2")]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    names = [e["name"] for e in custom]
    assert names.count(STEP) == 3 and names.count(THOUGHT) == 3 and TOKEN in names
    streamed = [e["data"]["chunk"] for e in events if e["event"] == "on_chain_stream"]
    steps = [
        {**e["data"], "thought": t["data"]["thought"], "subquery": t["data"]["subquery"]}
        for t, e in zip(custom, custom[1:])
        if (t["name"], e["name"]) == (THOUGHT, STEP)
    ]
    assert [c["step"] for c in streamed[:-1]] == steps == streamed[-1]["steps"]
    # every step's thought streams live, just before its step, then the answer tokens
    assert names[:7] == [THOUGHT, STEP] * 3 + [TOKEN]
    assert set(names[6:]) == {TOKEN}
    end = next(e for e in events if e["event"] == "on_chain_end")
    assert end["data"]["output"]["answer"] == chunks[-1]["answer"]
    tokens = "".join(e["data"]["text"] for e in custom if e["name"] == TOKEN)
    assert tokens.strip() == chunks[-1]["answer"]
    assert chunks[-1]["steps"][0]["thought"] and chunks[-1]["steps"][0]["subquery"]


def test_chain_as_langgraph_node(lc_model, vs, retrieving):
    from typing import TypedDict

    pytest.importorskip("langgraph")
    from langgraph.graph import END, START, StateGraph

    class State(TypedDict, total=False):
        question: str
        answer: str
        source_documents: list
        steps: list
        timings_ms: dict

    graph = StateGraph(State)
    graph.add_node("rag", LatentRAGChain(model=lc_model, vectorstore=vs, max_steps=1))
    graph.add_edge(START, "rag")
    graph.add_edge("rag", END)
    out = graph.compile().invoke({"question": Q})
    assert out["question"] == Q and out["answer"] and len(out["source_documents"]) == 3

    from pydantic import BaseModel

    class ModelState(BaseModel):  # LangGraph states may be pydantic models too
        question: str
        answer: str = ""

    graph = StateGraph(ModelState)
    graph.add_node("rag", LatentRAGChain(model=lc_model, vectorstore=vs, max_steps=1))
    graph.add_edge(START, "rag")
    graph.add_edge("rag", END)
    assert graph.compile().invoke(ModelState(question=Q))["answer"] == out["answer"]


# ---------------------------------------------------------------------------------- events
def test_retriever_events_reach_a_callback_handler(lc_model, vs, retrieving):
    rec = Recorder()
    r = LatentRAGRetriever(model=lc_model, vectorstore=vs, max_steps=2)
    r.invoke(Q, config={"callbacks": [rec]})
    assert [n for n, _, _ in rec.events] == [STEP] * 3
    assert len({run for _, _, run in rec.events}) == 1  # all on the retriever's run


@pytest.mark.asyncio
async def test_retriever_astream_events(lc_model, vs, retrieving):
    r = LatentRAGRetriever(model=lc_model, vectorstore=vs, max_steps=2, decode=True)
    events = [e async for e in r.astream_events(Q, version="v2")]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "on_retriever_start" and kinds[-1] == "on_retriever_end"
    names = [e["name"] for e in events if e["event"] == "on_custom_event"]
    assert names == [THOUGHT, STEP] * 3  # each thought decoded live, before its step


def test_tool_events_reach_a_callback_handler(lc_model, vs, retrieving):
    from langchain_core.tools import create_retriever_tool

    r = LatentRAGRetriever(model=lc_model, vectorstore=vs, max_steps=1)
    tool = create_retriever_tool(r, "latentrag_search", "Search the corpus with LatentRAG.")
    rec = Recorder()
    text = tool.invoke({"query": Q}, config={"callbacks": [rec]})
    assert "Curie" in text or text
    assert [d["action"] for d in rec.named(STEP)] == ["retrieve", "answer"]
    chain_tool = LatentRAGChain(model=lc_model, vectorstore=vs, max_steps=1).as_tool(
        name="latentrag_answer", description="Answer with LatentRAG."
    )
    assert set(chain_tool.args) == {"question"}
    rec = Recorder()
    text = chain_tool.invoke({"question": Q}, config={"callbacks": [rec]})
    assert len(rec.named(STEP)) == 2 and rec.named(TOKEN)
    # the agent's LLM reads the answer and its sources; the whole output is the artifact
    call = {"type": "tool_call", "id": "c1", "name": "latentrag_answer", "args": {"question": Q}}
    message = chain_tool.invoke(call)
    out = message.artifact
    assert message.content == text and text.startswith(out["answer"])
    assert [f"(id: {d.id})" in text for d in out["source_documents"]] == [True] * 3
    assert len(text) < 400 and "Sources:" in text


@pytest.mark.asyncio
async def test_tool_astream_events(lc_model, vs, retrieving):
    from langchain_core.tools import create_retriever_tool

    r = LatentRAGRetriever(model=lc_model, vectorstore=vs, max_steps=1)
    tool = create_retriever_tool(r, "latentrag_search", "Search the corpus with LatentRAG.")
    events = [e async for e in tool.astream_events({"query": Q}, version="v2")]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert [e["name"] for e in custom] == [STEP, STEP]
    retriever_run = next(e["run_id"] for e in events if e["event"] == "on_retriever_start")
    assert all(e["run_id"] == retriever_run for e in custom)


# ---------------------------------------------------------------------------------- errors
def test_other_embedding_class_is_refused(lc_model, docs):
    fake = InMemoryVectorStore(DeterministicFakeEmbedding(size=384))
    for cls in (LatentRAGRetriever, LatentRAGChain):
        with pytest.raises(EncoderMismatchError) as err:
            cls(model=lc_model, vectorstore=fake)
        assert "DeterministicFakeEmbedding" in str(err.value)
        assert lc_model.encoder_id in str(err.value)


def test_other_class_declaring_the_same_encoder_is_accepted(lc_model, emb):
    class SameModel(DeterministicFakeEmbedding):
        model_name: str = "all-MiniLM-L6-v2"

    LatentRAGRetriever(model=lc_model, vectorstore=InMemoryVectorStore(SameModel(size=384)))
    with pytest.raises(EncoderMismatchError, match="'acme/other'"):
        LatentRAGRetriever(
            model=lc_model,
            vectorstore=InMemoryVectorStore(SameModel(size=384, model_name="acme/other")),
        )


def test_a_store_over_cached_latentrag_embeddings_is_accepted(lc_model, emb, docs):
    """LangChain's caching wrapper is checked by the embeddings it wraps."""
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_classic.storage import InMemoryByteStore

    cached = CacheBackedEmbeddings.from_bytes_store(emb, InMemoryByteStore(), namespace="t")
    store = InMemoryVectorStore.from_documents(docs[:3], cached)
    assert LatentRAGRetriever(model=lc_model, vectorstore=store, max_steps=1).invoke(Q)
    other = CacheBackedEmbeddings.from_bytes_store(
        DeterministicFakeEmbedding(size=384), InMemoryByteStore(), namespace="t"
    )
    with pytest.raises(EncoderMismatchError, match="DeterministicFakeEmbedding"):
        LatentRAGRetriever(model=lc_model, vectorstore=InMemoryVectorStore(other))


def test_other_encoder_and_dim_are_refused(lc_model, emb):
    from types import SimpleNamespace

    other = LatentRAGEmbeddings.model_construct(
        model=SimpleNamespace(encoder_id="acme/enc", dim=128)
    )
    with pytest.raises(EncoderMismatchError, match=r"'acme/enc' \(128-dim\).*all-MiniLM-L6-v2"):
        LatentRAGRetriever(model=lc_model, vectorstore=InMemoryVectorStore(other))

    faiss = pytest.importorskip("faiss")
    pytest.importorskip("langchain_community")
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS

    small = FAISS(emb, faiss.IndexFlatL2(8), InMemoryDocstore(), {})
    with pytest.raises(EncoderMismatchError, match="8-dim vectors.*384-dim"):
        LatentRAGRetriever(model=lc_model, vectorstore=small)


def test_mismatch_in_a_store_that_was_empty_fails_at_first_call(lc_model, emb):
    store = InMemoryVectorStore(emb)
    r = LatentRAGRetriever(model=lc_model, vectorstore=store)  # nothing to check yet
    store.store["x"] = {"id": "x", "vector": [0.1] * 8, "text": "x", "metadata": {}}
    with pytest.raises(EncoderMismatchError, match="8-dim"):
        r.invoke(Q)


def test_store_without_search_by_vector(lc_model):
    for cls in (LatentRAGRetriever, LatentRAGChain):
        with pytest.raises(StoreError, match="TextOnlyStore cannot search by vector"):
            cls(model=lc_model, vectorstore=TextOnlyStore())


def test_store_errors_propagate_without_partial_results(lc_model, emb, docs, retrieving):
    store = store_of(FlakyStore, emb, docs)
    FlakyStore.calls = 0
    rec = Recorder()
    r = LatentRAGRetriever(model=lc_model, vectorstore=store, max_steps=3)
    with pytest.raises(
        StoreError,
        match="FlakyStore.similarity_search_with_score_by_vector "
        "failed at latent step 1: ConnectionError: store went away",
    ) as err:
        r.invoke(Q, config={"callbacks": [rec]})
    assert isinstance(err.value.__cause__, ConnectionError)
    assert rec.errors == [err.value]
    FlakyStore.calls = 0
    chain = LatentRAGChain(model=lc_model, vectorstore=store, max_steps=3)
    with pytest.raises(StoreError, match="store went away"):
        chain.batch([Q, "Who was Pierre Curie?"])


@pytest.mark.asyncio
async def test_empty_question_is_refused(lc_model, vs):
    r = LatentRAGRetriever(model=lc_model, vectorstore=vs)
    chain = LatentRAGChain(model=lc_model, vectorstore=vs)
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="empty question"):
            r.invoke(bad)
        with pytest.raises(ValueError, match="empty question"):
            await r.ainvoke(bad)
        with pytest.raises(ValueError, match="empty question"):
            chain.invoke({"question": bad})
    with pytest.raises(ValueError, match="empty question"):
        chain.invoke({"text": Q})


@pytest.mark.asyncio
async def test_empty_store_returns_no_documents(lc_model, emb, retrieving):
    empty = InMemoryVectorStore(emb)
    rec = Recorder()
    r = LatentRAGRetriever(model=lc_model, vectorstore=empty, max_steps=2)
    assert r.invoke(Q, config={"callbacks": [rec]}) == []
    assert await r.ainvoke(Q) == []
    assert [s["document_ids"] for s in rec.named(STEP)] == [[], [], []]
    out = LatentRAGChain(model=lc_model, vectorstore=empty, max_steps=1).invoke(Q)
    assert out["source_documents"] == [] and isinstance(out["answer"], str)

"""LlamaIndex adapters: embedding, retriever, query engine, events, agents, persistence, errors.

No `from __future__ import annotations` here: workflow steps are resolved by their annotations.
"""

import asyncio
import json
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Settings, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.agent.workflow import (  # noqa: E402
    FunctionAgent,
    ReActAgent,
    ToolCallResult,
)
from llama_index.core.base.base_query_engine import BaseQueryEngine  # noqa: E402
from llama_index.core.base.base_retriever import BaseRetriever  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.base.response.schema import (  # noqa: E402
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.llms import ChatMessage, MockLLM  # noqa: E402
from llama_index.core.llms.mock import MockFunctionCallingLLM  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402
from llama_index.core.tools import QueryEngineTool, ToolSelection  # noqa: E402
from llama_index.core.vector_stores.simple import SimpleVectorStore  # noqa: E402
from llama_index.core.workflow import Context, StartEvent, StopEvent, Workflow, step  # noqa: E402

from latentrag_plugins.errors import EncoderMismatchError, StoreError  # noqa: E402
from latentrag_plugins.llama_index import (  # noqa: E402
    LatentRAGEmbedding,
    LatentRAGQueryEngine,
    LatentRAGRetriever,
    LatentStepEvent,
    LatentStepStreamEvent,
    LatentThoughtEvent,
    LatentThoughtStreamEvent,
    load_index,
    persist_index,
    stream_events_to,
)
from latentrag_plugins.llama_index.manifest import MANIFEST_FILE  # noqa: E402
from latentrag_plugins.store.corpus import read_corpus  # noqa: E402
from tests.conftest import EXAMPLES, ForceActions, make_model, pace_tokens  # noqa: E402

Q = "In which country was Marie Curie born?"


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lmodel(tokenizer):
    """A tiny LatentRAG with short answers and decodes, to keep this module fast."""
    return make_model(tokenizer, "tiny", max_answer_tokens=6, max_decode_tokens=6)


@pytest.fixture(scope="module", autouse=True)
def settings(lmodel):
    """Offline LlamaIndex defaults (nothing may reach OpenAI) and one torch thread (tiny models
    run several times faster on a busy CPU); restored afterwards."""
    import torch

    old = Settings._llm, Settings._embed_model, torch.get_num_threads()
    Settings.llm = MockLLM()
    Settings.embed_model = LatentRAGEmbedding(model=lmodel)
    torch.set_num_threads(1)
    yield
    Settings._llm, Settings._embed_model = old[:2]
    torch.set_num_threads(old[2])


@pytest.fixture(scope="module")
def embed(lmodel):
    return LatentRAGEmbedding(model=lmodel)


@pytest.fixture(scope="module")
def nodes(embed):
    """The example corpus as nodes, embedded once with the document tower (indexes reuse it)."""
    docs = read_corpus(EXAMPLES / "corpus.jsonl")
    vectors = embed.get_text_embedding_batch([d.text for d in docs])
    return [
        TextNode(id_=d.id, text=d.text, metadata={"source": "corpus", "n": i}, embedding=v)
        for i, (d, v) in enumerate(zip(docs, vectors))
    ]


def unembedded(nodes):
    return [n.model_copy(update={"embedding": None}) for n in nodes]


@pytest.fixture(scope="module")
def index(nodes, embed):
    """A VectorStoreIndex over the default SimpleVectorStore."""
    return VectorStoreIndex(nodes=[n.model_copy() for n in nodes], embed_model=embed)


def faiss_index(nodes, embed):
    import faiss
    from llama_index.vector_stores.faiss import FaissVectorStore

    store = FaissVectorStore(faiss_index=faiss.IndexFlatIP(embed.dim))
    storage = StorageContext.from_defaults(vector_store=store)
    return VectorStoreIndex(
        nodes=[n.model_copy() for n in nodes], storage_context=storage, embed_model=embed
    )


class Collect(BaseEventHandler):
    """Collects LatentRAG instrumentation events."""

    events: list = []

    def handle(self, event, **kwargs):
        if isinstance(event, (LatentStepEvent, LatentThoughtEvent)):
            self.events.append(event)


@pytest.fixture
def collect():
    handler = Collect(events=[])
    root = get_dispatcher("latentrag_plugins")
    root.add_event_handler(handler)
    yield handler
    root.event_handlers = [h for h in root.event_handlers if h is not handler]


def ids(nodes):
    return [n.node.node_id for n in nodes]


# ---------------------------------------------------------------------------------- classes
def test_class():
    assert BaseEmbedding.__name__ in [b.__name__ for b in LatentRAGEmbedding.__mro__]
    assert BaseRetriever.__name__ in [b.__name__ for b in LatentRAGRetriever.__mro__]
    assert BaseQueryEngine.__name__ in [b.__name__ for b in LatentRAGQueryEngine.__mro__]
    assert "CustomQueryEngine" not in [b.__name__ for b in LatentRAGQueryEngine.__mro__]


def test_optional_import():
    code = (
        "import sys\n"
        "import latentrag_plugins\n"
        "assert not [m for m in sys.modules if m.startswith('llama_index')]\n"
        "sys.modules['llama_index.core'] = None\n"
        "try:\n"
        "    import latentrag_plugins.llama_index\n"
        "except ImportError as exc:\n"
        "    assert 'latentrag-plugins[llama-index]' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------------- embedding
def test_embedding_is_the_document_tower(lmodel, embed, tmp_path):
    texts = ["Marie Curie\nA physicist.", "Warsaw is in Poland.", "Paris"]
    want = lmodel.embed_documents(texts)
    assert embed.model_name == lmodel.encoder_id
    np.testing.assert_allclose(embed.get_text_embedding_batch(texts), want, atol=1e-5)
    assert embed.get_text_embedding(texts[0]) == pytest.approx(want[0].tolist(), abs=1e-5)
    query = lmodel.embed_query(Q).tolist()
    assert embed.get_query_embedding(Q) == pytest.approx(query, abs=1e-5)

    async def both():
        return await embed.aget_query_embedding(Q), await embed.aget_text_embedding_batch(texts)

    aq, at = asyncio.run(both())
    assert aq == pytest.approx(query, abs=1e-5)
    np.testing.assert_allclose(at, want, atol=1e-5)
    # A checkpoint path loads only the document tower.
    lmodel.save_pretrained(tmp_path / "ckpt")
    from_path = LatentRAGEmbedding(model=tmp_path / "ckpt")
    assert from_path.model_name == embed.model_name
    # the same tower (loaded in the default dtype: bfloat16 on CPUs that multiply it natively)
    assert float(np.dot(from_path.get_text_embedding(texts[1]), want[1])) > 0.999


# ---------------------------------------------------------------------------------- retriever
@pytest.mark.parametrize("store", ["simple", "faiss"])
def test_retriever_steps_union_and_metadata(lmodel, nodes, embed, index, store):
    idx = index if store == "simple" else faiss_index(nodes, embed)
    retriever = LatentRAGRetriever(
        model=lmodel, index=idx, similarity_top_k=4, top_k=3, max_steps=2, decode=False
    )
    with ForceActions(lmodel, "retrieve"):
        found = retriever.retrieve(Q)
        everything = LatentRAGRetriever(model=lmodel, index=idx, top_k=3, max_steps=2).retrieve(Q)
    assert 1 <= len(found) <= 4
    assert ids(found) == ids(everything)[:4]
    assert len(set(ids(everything))) == len(everything)  # de-duplicated
    assert set(ids(everything)) <= {n.node_id for n in nodes}
    by_id = {n.node_id: n for n in nodes}
    for n in everything:
        meta = n.node.metadata
        assert meta["source"] == "corpus" and meta["n"] == by_id[n.node_id].metadata["n"]
        assert meta["latentrag_step"] in (0, 1) and meta["latentrag_rank"] in (0, 1, 2)
        assert "latentrag_step" not in n.node.get_content(metadata_mode="llm")
        assert n.node.get_content() == by_id[n.node_id].text  # text from the docstore (FAISS)
        assert isinstance(n.score, float)
    steps = [n.node.metadata["latentrag_step"] for n in everything]
    assert steps == sorted(steps) and steps[0] == 0
    # Step 0 searches with the latent embedding through the index's own retriever.
    latent = retriever.searcher.vector_retriever
    assert latent.similarity_top_k == 3


def test_retriever_kwargs_may_not_set_what_the_adapter_sets(lmodel, index):
    for key in ("similarity_top_k", "callback_manager"):
        with pytest.raises(ValueError, match=f"retriever_kwargs may not set {key}"):
            LatentRAGRetriever(model=lmodel, index=index, retriever_kwargs={key: None})


def test_retriever_at_least_one_step_and_async(lmodel, index):
    retriever = LatentRAGRetriever(model=lmodel, index=index, top_k=2, max_steps=3)
    with ForceActions(lmodel, "answer"):  # the model wants to answer at once: still one search
        sync = retriever.retrieve(Q)
        async_ = asyncio.run(retriever.aretrieve(Q))
    assert len(sync) == 2 and ids(sync) == ids(async_)
    assert [n.score for n in sync] == pytest.approx([n.score for n in async_])
    assert {n.node.metadata["latentrag_step"] for n in sync} == {0}


def test_events_in_order_with_decoded_text(lmodel, index, collect):
    retriever = LatentRAGRetriever(model=lmodel, index=index, top_k=2, max_steps=2, decode=True)
    with ForceActions(lmodel, "retrieve"):
        found = retriever.retrieve(Q)
    ev = collect.events
    kinds = [(type(e).__name__, e.step) for e in ev]
    assert kinds == [
        ("LatentThoughtEvent", 0),
        ("LatentStepEvent", 0),
        ("LatentThoughtEvent", 1),
        ("LatentStepEvent", 1),
        ("LatentThoughtEvent", 2),
        ("LatentStepEvent", 2),
    ]
    assert [e.action for e in ev if isinstance(e, LatentStepEvent)] == ["retrieve"] * 2 + ["answer"]
    assert ev[-1].forced
    thoughts = [e for e in ev if isinstance(e, LatentThoughtEvent)]
    assert all(isinstance(e.thought, str) and e.thought for e in thoughts)
    assert all(isinstance(e.subquery, str) and e.subquery for e in thoughts[:2])
    assert thoughts[-1].subquery is None
    assert all(e.question == Q for e in ev)
    assert all(e.span_id.startswith("LatentRAGRetriever._retrieve") for e in ev)
    step_ids = [i for e in ev if isinstance(e, LatentStepEvent) for i in e.node_ids]
    assert ids(found) == list(dict.fromkeys(step_ids))
    assert all(e.scores and len(e.scores) == len(e.node_ids) for e in ev[1:4:2])
    # The decoded subquery is carried into the metadata of the nodes it found.
    first = [n for n in found if n.node.metadata["latentrag_step"] == 0]
    assert first[0].node.metadata["latentrag_subquery"] == thoughts[0].subquery


# ---------------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("store", ["simple", "faiss"])
def test_persist_reload_same_results(lmodel, nodes, embed, index, tmp_path, store):
    idx = index if store == "simple" else faiss_index(nodes, embed)
    persist_index(idx, tmp_path, lmodel)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["encoder_id"] == lmodel.encoder_id and manifest["dim"] == lmodel.dim
    loaded = load_index(tmp_path, lmodel)
    assert type(loaded.vector_store) is type(idx.vector_store)
    with ForceActions(lmodel, "retrieve"):
        before = LatentRAGRetriever(model=lmodel, index=idx, max_steps=2).retrieve(Q)
        after = LatentRAGRetriever(model=lmodel, index=loaded, max_steps=2).retrieve(Q)
    assert ids(before) == ids(after)
    assert [n.score for n in before] == pytest.approx([n.score for n in after], abs=1e-5)
    assert [n.node.get_content() for n in before] == [n.node.get_content() for n in after]


def test_manifest_checked_on_load(lmodel, index, tmp_path):
    persist_index(index, tmp_path, lmodel)
    path = tmp_path / MANIFEST_FILE
    good = json.loads(path.read_text())
    path.write_text(json.dumps({**good, "encoder_id": "BAAI/bge-small-en-v1.5"}))
    with pytest.raises(EncoderMismatchError, match="bge-small-en-v1.5.*all-MiniLM-L6-v2"):
        load_index(tmp_path, lmodel)
    path.write_text(json.dumps({**good, "dim": 768}))
    with pytest.raises(EncoderMismatchError, match="768-dim.*384-dim"):
        load_index(tmp_path, lmodel)
    path.unlink()  # an index persisted by plain LlamaIndex: loads, dimension probed
    assert load_index(tmp_path, lmodel).vector_store is not None
    with pytest.raises(StoreError, match="not found"):
        load_index(tmp_path / "missing", lmodel)


# ---------------------------------------------------------------------------------- errors
def test_mismatched_index_names_both(lmodel, nodes):
    named = MockEmbedding(embed_dim=384, model_name="BAAI/bge-small-en-v1.5")
    idx = VectorStoreIndex(nodes=unembedded(nodes[:3]), embed_model=named)
    with pytest.raises(EncoderMismatchError, match="bge-small-en-v1.5.*all-MiniLM-L6-v2"):
        LatentRAGRetriever(model=lmodel, index=idx)
    mini = MockEmbedding(embed_dim=8, model_name="sentence-transformers/all-MiniLM-L6-v2")
    small = VectorStoreIndex(nodes=unembedded(nodes[:3]), embed_model=mini)  # says it, isn't
    with pytest.raises(EncoderMismatchError, match=r"8-dim.*all-MiniLM-L6-v2.*384-dim"):
        LatentRAGQueryEngine(model=lmodel, index=small)


def test_an_index_whose_embed_model_names_no_encoder_is_refused(lmodel, nodes):
    """Its vectors could come from anything (here: MockEmbedding's constant ones, which would
    retrieve at random), as the LangChain adapter also refuses."""
    unnamed = MockEmbedding(embed_dim=384)
    idx = VectorStoreIndex(nodes=unembedded(nodes[:3]), embed_model=unnamed)
    with pytest.raises(EncoderMismatchError, match="names no model.*LatentRAGEmbedding"):
        LatentRAGRetriever(model=lmodel, index=idx)


def test_store_errors_propagate_with_context(lmodel, nodes, embed):
    class BrokenStore(SimpleVectorStore):
        def query(self, query, **kwargs):
            raise RuntimeError("disk on fire")

    storage = StorageContext.from_defaults(vector_store=BrokenStore())
    idx = VectorStoreIndex(
        nodes=[n.model_copy() for n in nodes[:3]], storage_context=storage, embed_model=embed
    )
    retriever = LatentRAGRetriever(model=lmodel, index=idx)
    with pytest.raises(
        StoreError, match="BrokenStore search failed at latent step 0.*disk on fire"
    ) as err:
        retriever.retrieve(Q)
    assert isinstance(err.value.__cause__, RuntimeError)
    with pytest.raises(StoreError, match="disk on fire"):
        asyncio.run(LatentRAGQueryEngine(model=lmodel, index=idx).aquery(Q))


def test_empty_question_and_empty_index(lmodel, index, embed):
    retriever = LatentRAGRetriever(model=lmodel, index=index)
    engine = LatentRAGQueryEngine(model=lmodel, index=index)
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="LatentRAGRetriever got an empty question"):
            retriever.retrieve(bad)
        with pytest.raises(ValueError, match="LatentRAGQueryEngine got an empty question"):
            engine.query(bad)
    # Empty index: one latent step, no nodes, LlamaIndex's "Empty Response".
    empty = VectorStoreIndex(nodes=[], embed_model=embed)
    assert LatentRAGRetriever(model=lmodel, index=empty).retrieve(Q) == []
    response = LatentRAGQueryEngine(model=lmodel, index=empty).query(Q)
    assert response.response == "Empty Response" and response.source_nodes == []
    assert len(response.metadata["latent_steps"]) == 1
    stream = LatentRAGQueryEngine(model=lmodel, index=empty, streaming=True).query(Q)
    assert str(stream) == "Empty Response"


# ---------------------------------------------------------------------------------- query engine
def test_query_engine_response_streaming_and_async(lmodel, index, collect):
    engine = LatentRAGQueryEngine(model=lmodel, index=index, streaming=False, decode=False)
    with ForceActions(lmodel, "retrieve"):
        response = engine.query(Q)
        streaming = LatentRAGQueryEngine(model=lmodel, index=index, streaming=True)
        stream = streaming.query(Q)
        assert isinstance(stream, StreamingResponse)
        assert ids(stream.source_nodes) == ids(response.source_nodes)  # known before the tokens
        tokens = list(stream.response_gen)

        async def both():
            plain = await engine.aquery(Q)
            astream = await streaming.aquery(Q)
            assert isinstance(astream, AsyncStreamingResponse)
            return plain, astream, [t async for t in astream.response_gen]

        aresponse, astream, atokens = asyncio.run(both())
    assert isinstance(response, Response) and response.response
    meta = response.metadata
    assert set(meta) >= {"latent_steps", "timings_ms", "forward_passes"}
    assert [s["action"] for s in meta["latent_steps"]] == ["retrieve"] * 4 + ["answer"]
    assert meta["forward_passes"] >= 5 and meta["timings_ms"]["total"] > 0
    seen = [i for s in meta["latent_steps"] for i in s["node_ids"]]
    assert ids(response.source_nodes) == list(dict.fromkeys(seen))
    assert len(tokens) > 1 and "".join(tokens).strip() == response.response
    assert stream.metadata["forward_passes"] == meta["forward_passes"]  # filled at the end
    assert aresponse.response == response.response
    assert ids(aresponse.source_nodes) == ids(response.source_nodes)
    assert "".join(atokens).strip() == response.response
    assert ids(astream.source_nodes) == ids(response.source_nodes)
    assert astream.metadata["latent_steps"] == meta["latent_steps"]
    spans = {e.span_id.split("-")[0] for e in collect.events}
    assert spans == {"LatentRAGQueryEngine._query", "LatentRAGQueryEngine._aquery"}


def test_abandoned_async_stream_stops_its_request(lmodel, index, monkeypatch):
    """Cancelling an async streaming query before its answer starts cancels its store search in
    progress; closing its stream after the first piece ends the answer at the next token."""
    import copy

    model = copy.deepcopy(lmodel)  # its own engine
    engine = LatentRAGQueryEngine(model=model, index=index, streaming=True)
    outcome: list[str] = []

    async def hang(bundle: Any) -> None:
        try:
            await asyncio.Event().wait()  # a search that would never end
        except asyncio.CancelledError:
            outcome.append("search cancelled")
            raise

    async def cancel_while_searching() -> None:
        real = engine.retriever.searcher.vector_retriever.aretrieve
        engine.retriever.searcher.vector_retriever.aretrieve = hang
        try:
            task = asyncio.create_task(engine.aquery(Q))
            for _ in range(1000):
                if model.engine._searching:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):
                if outcome:
                    break
                await asyncio.sleep(0.01)
        finally:
            engine.retriever.searcher.vector_retriever.aretrieve = real

    asyncio.run(cancel_while_searching())
    assert outcome == ["search cancelled"]
    written = pace_tokens(monkeypatch, 0.05)

    async def close_after_first_piece() -> None:
        stream = (await engine.aquery(Q)).async_response_gen()
        assert await anext(stream)
        await stream.aclose()

    asyncio.run(close_after_first_piece())
    _wait_idle(model)
    (tokens,) = written.values()
    assert 1 <= len(tokens) <= 3 < model.config.max_answer_tokens


def _wait_idle(model: Any) -> None:
    """Wait until the model's engine holds no request (a cancelled one leaves at its next pass)."""
    for _ in range(500):
        if model.engine.load == 0:
            return
        time.sleep(0.01)
    raise AssertionError("a cancelled request is still in the engine")


def test_an_async_stream_reads_without_its_event_loop(lmodel, index):
    """LlamaIndex's ``str()`` of an async streaming response reads it on a new event loop in
    another thread while the caller's loop waits (``QueryEngineTool`` does so): the answer must
    not need the caller's loop, nor a loop that has closed."""
    plain = LatentRAGQueryEngine(model=lmodel, index=index, max_steps=1)
    engine = LatentRAGQueryEngine(model=lmodel, index=index, max_steps=1, streaming=True)
    want = plain.query(Q).response

    async def in_loop() -> str:
        return str(await engine.aquery(Q))

    assert _finishes_within(lambda: asyncio.run(in_loop())) == want
    assert str(asyncio.run(engine.aquery(Q))) == want  # read after its loop has closed
    written: list[Any] = []
    ctx = type("Ctx", (), {"write_event_to_stream": lambda self, ev: written.append(ev)})()

    async def streamed_to_a_workflow() -> Any:
        with stream_events_to(ctx):
            return await engine.aquery(Q)

    assert str(asyncio.run(streamed_to_a_workflow())) == want  # late events: nobody listens
    assert written  # those sent while the loop ran
    tool = QueryEngineTool.from_defaults(engine, name="kb", description="Knowledge base.")
    agent = FunctionAgent(tools=[tool], llm=_function_llm("kb"))
    events, out = _run(lambda: agent.run(user_msg=Q))
    (result,) = [e for e in events if isinstance(e, ToolCallResult)]
    assert result.tool_output.content == want and str(out) == f"Final: {want}"


def _finishes_within(fn: Any, seconds: float = 60) -> Any:
    """``fn()`` in a thread; fail (instead of hanging) if it deadlocks."""
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(value=fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "deadlocked"
    return out["value"]


def test_cancelled_async_query_ends_its_answer(lmodel, index, monkeypatch):
    """Cancelling a non-streaming ``aquery`` while it answers ends the answer at the engine's
    next token, instead of writing it on. Tokens are paced at 50 ms, so the count does not hang
    on a busy machine's event loop."""
    import copy

    model = copy.deepcopy(lmodel)  # its own engine
    engine = LatentRAGQueryEngine(model=model, index=index)
    full = engine.query(Q).metadata["output_tokens"]
    written = pace_tokens(monkeypatch, 0.05)

    async def main() -> None:
        task = asyncio.create_task(engine.aquery(Q))
        for _ in range(2000):  # up to 10 s
            if written:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    _wait_idle(model)
    (tokens,) = written.values()
    assert full == model.config.max_answer_tokens
    assert 1 <= len(tokens) <= 3 < full


def test_closed_sync_stream_ends_its_answer(lmodel, index, monkeypatch):
    """Closing a streaming query's text generator early ends the answer at the engine's next
    token, instead of generating on."""
    import copy

    model = copy.deepcopy(lmodel)  # its own engine
    engine = LatentRAGQueryEngine(model=model, index=index, streaming=True)
    written = pace_tokens(monkeypatch, 0.05)
    gen = engine.query(Q).response_gen
    assert next(gen)
    gen.close()
    _wait_idle(model)
    (tokens,) = written.values()
    assert 1 <= len(tokens) <= 3 < model.config.max_answer_tokens


# ---------------------------------------------------------------------------------- agents
def _function_llm(tool_name):
    def script(messages, **kwargs):
        if not any(m.role == "tool" for m in messages):
            call = ToolSelection(tool_id="call_1", tool_name=tool_name, tool_kwargs={"input": Q})
            if tool_name == "latentrag":
                call.tool_kwargs = {"query": Q}
            return ChatMessage(
                role="assistant", content="", additional_kwargs={"tool_calls": [call]}
            )
        return ChatMessage(role="assistant", content=f"Final: {messages[-1].content}")

    return MockFunctionCallingLLM(response_generator=script)


def _run(start):
    """Run a workflow started by ``start()``; returns its stream events and its result."""

    async def main():
        handler = start()
        events = [ev async for ev in handler.stream_events()]
        return events, await handler

    return asyncio.run(main())


def test_query_engine_tool_in_function_agent(lmodel, index, collect):
    engine = LatentRAGQueryEngine(model=lmodel, index=index, max_steps=1)
    tool = QueryEngineTool.from_defaults(engine, name="kb", description="Knowledge base.")
    agent = FunctionAgent(tools=[tool], llm=_function_llm("kb"))
    events, out = _run(lambda: agent.run(user_msg=Q))
    results = [e for e in events if isinstance(e, ToolCallResult)]
    assert len(results) == 1 and results[0].tool_name == "kb"
    answer = results[0].tool_output.raw_output
    assert isinstance(answer, Response) and answer.source_nodes
    assert str(out) == f"Final: {answer.response}"
    assert [type(e).__name__ for e in collect.events] == ["LatentStepEvent"] * 2


@pytest.mark.parametrize("streaming", [False, True])
def test_as_tool_streams_thoughts_to_react_agent(lmodel, index, streaming):
    engine = LatentRAGQueryEngine(
        model=lmodel, index=index, max_steps=1, decode=True, streaming=streaming
    )
    calls = []

    def script(messages, **kwargs):
        calls.append(messages)
        if len(calls) == 1:
            return ChatMessage(
                role="assistant",
                content=f'Thought: I need to search.\nAction: latentrag\nAction Input: {{"query": "{Q}"}}',
            )
        return ChatMessage(role="assistant", content="Thought: I can answer.\nAnswer: Poland")

    agent = ReActAgent(
        tools=[engine.as_tool()], llm=MockFunctionCallingLLM(response_generator=script)
    )
    events, out = _run(lambda: agent.run(user_msg=Q))
    names = [type(e).__name__ for e in events]
    start, end = names.index("ToolCall"), names.index("ToolCallResult")
    assert names[start + 1 : end] == ["LatentThoughtStreamEvent", "LatentStepStreamEvent"] * 2
    thoughts = [e for e in events if isinstance(e, LatentThoughtStreamEvent)]
    assert thoughts[0].thought and thoughts[0].subquery and thoughts[0].question == Q
    steps = [e for e in events if isinstance(e, LatentStepStreamEvent)]
    assert [s.action for s in steps] == ["retrieve", "answer"] and steps[0].node_ids
    result = events[end].tool_output
    assert result.raw_output.metadata["latent_steps"][0]["thought"] == thoughts[0].thought
    assert str(out) == "Poland"


def test_engine_in_a_workflow_step(lmodel, index):
    engine = LatentRAGQueryEngine(model=lmodel, index=index, max_steps=1, streaming=True)

    class Ask(Workflow):
        @step
        async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
            with stream_events_to(ctx):
                stream = await engine.aquery(ev.question)
                response = await stream.get_response()
            return StopEvent(result=response)

    events, response = _run(lambda: Ask(timeout=60).run(question=Q))
    assert isinstance(response, Response) and response.source_nodes
    steps = [e for e in events if isinstance(e, LatentStepStreamEvent)]
    assert [s.step for s in steps] == [0, 1]


def test_a_node_without_score_reports_none_not_zero():
    from llama_index.core.schema import NodeWithScore, TextNode

    from latentrag_plugins.llama_index._run import to_doc
    from latentrag_plugins.llama_index.query_engine import response_metadata
    from latentrag_plugins.results import LatentRAGResult, Step

    doc = to_doc(NodeWithScore(node=TextNode(text="Warsaw", id_="w"), score=None))
    res = LatentRAGResult(answer="a", steps=[Step(index=0, action="retrieve", docs=[doc])])
    assert response_metadata(res)["latent_steps"][0]["scores"] == [None]


def test_async_paths_search_the_store_asynchronously(lmodel, nodes, embed):
    from llama_index.core.vector_stores.simple import SimpleVectorStore

    class AsyncOnly(SimpleVectorStore):
        def query(self, query, **kw):
            raise AssertionError("sync search on the async path")

        async def aquery(self, query, **kw):
            await asyncio.sleep(0)
            return SimpleVectorStore.query(self, query, **kw)

    storage = StorageContext.from_defaults(vector_store=AsyncOnly())
    idx = VectorStoreIndex(
        [n.model_copy() for n in nodes], storage_context=storage, embed_model=embed
    )
    ticks, done = 0, asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def main():
        t = asyncio.create_task(ticker())
        got = await LatentRAGRetriever(model=lmodel, index=idx, max_steps=2).aretrieve(Q)
        resp = await LatentRAGQueryEngine(model=lmodel, index=idx, max_steps=2).aquery(Q)
        engine = LatentRAGQueryEngine(model=lmodel, index=idx, max_steps=2, streaming=True)
        streamed = await (await engine.aquery(Q)).get_response()
        done.set()
        await t
        return got, resp, streamed

    with ForceActions(lmodel, "retrieve"):
        got, resp, streamed = asyncio.run(main())
    assert got and resp.source_nodes and ticks > 50  # the event loop ran during the searches
    assert streamed.response == resp.response and streamed.source_nodes


def test_async_over_a_store_without_an_async_client_searches_in_a_thread(
    lmodel, nodes, embed, caplog
):
    """A Qdrant vector store made with only a sync client refuses async searches ("Async client
    is not initialized!"): the async paths search it with its sync API in a worker thread."""
    pytest.importorskip("llama_index.vector_stores.qdrant")
    import uuid

    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    store = QdrantVectorStore(client=QdrantClient(location=":memory:"), collection_name="kb")
    storage = StorageContext.from_defaults(vector_store=store)
    points = [
        n.model_copy(update={"id_": str(uuid.uuid5(uuid.NAMESPACE_URL, n.id_))}) for n in nodes
    ]
    idx = VectorStoreIndex(points, storage_context=storage, embed_model=embed)
    with ForceActions(lmodel, "retrieve"):
        sync = LatentRAGQueryEngine(model=lmodel, index=idx, max_steps=2).query(Q)
        with caplog.at_level("WARNING"):
            got = asyncio.run(LatentRAGQueryEngine(model=lmodel, index=idx, max_steps=2).aquery(Q))
    assert got.response == sync.response and ids(got.source_nodes) == ids(sync.source_nodes)
    assert "worker thread" in caplog.text

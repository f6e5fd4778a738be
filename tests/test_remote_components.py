"""The LangChain and LlamaIndex components in remote mode: a LatentRAG service's URL in place of
a model and a store gives the answers, documents and events the model gives in-process."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from latentrag_plugins.serve import ServeConfig, ServiceUnavailable  # noqa: E402
from latentrag_plugins.serve.api import make_api  # noqa: E402
from latentrag_plugins.serve.service import Service  # noqa: E402
from latentrag_plugins.serve.stores import store_search  # noqa: E402
from tests.conftest import served_on_localhost  # noqa: E402

Q = "In which country was Marie Curie born?"
STEP, THOUGHT, TOKEN = "latentrag_step", "latentrag_thought", "latentrag_token"


@pytest.fixture(scope="module")
def url(model, store):
    """A replica's app over the test model and store, on a local port (no Ray)."""
    service = Service(ServeConfig(model="tiny", index="examples"), model=model,
                      store=store_search(store, model, "examples"))  # fmt: skip
    try:
        with served_on_localhost(make_api(service)) as address:
            yield address
    finally:
        model.set_engine()


@pytest.fixture
def local(model, store, force):
    """What the model answers in-process, with actions forced (retrieve twice)."""
    with force(model, "retrieve"):
        yield model.run(Q, store, max_steps=2, decode=True)


def ids(docs) -> list[str]:
    return list(dict.fromkeys(d.id for d in docs))


class Recorder:
    def __init__(self) -> None:
        from langchain_core.callbacks import BaseCallbackHandler

        events = self.events = []

        class Handler(BaseCallbackHandler):
            def on_custom_event(self, name, data, **kwargs):
                events.append((name, data))

        self.handler = Handler()

    def named(self, name: str) -> list:
        return [d for n, d in self.events if n == name]


def test_langchain_chain_and_retriever_from_a_service(url, model, force, local):
    from latentrag_plugins.langchain import LatentRAGChain, LatentRAGRetriever

    want = [d.id for s in local.steps for d in s.docs]
    with force(model, "retrieve"):
        chain = LatentRAGChain(model=url, max_steps=2, decode=True)
        rec = Recorder()
        out = chain.invoke(Q, {"callbacks": [rec.handler]})
        aout = asyncio.run(chain.ainvoke({"question": Q}))
        chunks = list(chain.stream(Q))
        docs = LatentRAGRetriever(model=url, max_steps=2, k=10).invoke(Q)
    assert out["answer"] == aout["answer"] == chunks[-1]["answer"] == local.answer
    assert [d.id for d in out["source_documents"]] == ids(d for s in local.steps for d in s.docs)
    assert [i for s in out["steps"] for i in s["document_ids"]] == want
    assert [s["thought"] for s in out["steps"]] == [s.thought for s in local.steps]
    assert len(rec.named(STEP)) == 3 and len(rec.named(THOUGHT)) == 3
    assert "".join(t["text"] for t in rec.named(TOKEN)).strip() == local.answer
    assert [c["step"]["action"] for c in chunks[:-1]] == ["retrieve", "retrieve", "answer"]
    assert [d.id for d in docs] == ids(d for s in local.steps[:2] for d in s.docs)
    assert all(d.metadata["latentrag_score"] is not None for d in docs)


def test_llama_index_engine_and_retriever_from_a_service(url, model, force, local):
    from latentrag_plugins.llama_index import LatentRAGQueryEngine, LatentRAGRetriever

    with force(model, "retrieve"):
        engine = LatentRAGQueryEngine(url, max_steps=2, decode=True)
        response = engine.query(Q)
        aresponse = asyncio.run(engine.aquery(Q))
        stream = LatentRAGQueryEngine(url, max_steps=2, streaming=True).query(Q)
        text = "".join(stream.response_gen)
        nodes = LatentRAGRetriever(url, max_steps=2).retrieve(Q)
    assert response.response == aresponse.response == text.strip() == local.answer
    want = ids(d for s in local.steps for d in s.docs)
    assert [n.node.node_id for n in response.source_nodes] == want
    assert [n.node.node_id for n in stream.source_nodes] == want
    assert [n.node.node_id for n in nodes] == want
    meta = response.source_nodes[0].node.metadata
    assert meta["latentrag_step"] == 0 and meta["latentrag_subquery"] == local.steps[0].subquery


def test_service_mistakes_and_a_service_that_is_down(url, store, model):
    from langchain_core.vectorstores import InMemoryVectorStore

    from latentrag_plugins.langchain import LatentRAGChain, LatentRAGEmbeddings
    from latentrag_plugins.llama_index import LatentRAGEmbedding, LatentRAGQueryEngine

    vs = InMemoryVectorStore(LatentRAGEmbeddings(model=model))
    with pytest.raises(ValueError, match="searches its own store"):
        LatentRAGChain(model=url, vectorstore=vs)
    with pytest.raises(ValueError, match="service's URL as model"):
        LatentRAGChain(model=model)
    with pytest.raises(TypeError, match="does not embed"):
        LatentRAGEmbeddings(model=url)
    with pytest.raises(TypeError, match="does not embed"):
        LatentRAGEmbedding(model=url)
    down = "http://127.0.0.1:9"  # the discard port: nothing listens
    with pytest.raises(ServiceUnavailable, match="127.0.0.1:9"):
        LatentRAGQueryEngine(down)

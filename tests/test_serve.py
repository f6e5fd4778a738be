"""The service's HTTP API and its client, on a replica's app served in this process (no Ray):
answers and events equal the local engine's, bad requests and store failures get clear errors,
and a client that goes away cancels its request."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from latentrag_plugins.engine import RequestCancelled, StepEvent, StoreSearch, ThoughtEvent
from latentrag_plugins.errors import StoreError
from latentrag_plugins.serve import (
    RemoteLatentRAG,
    ServeConfig,
    ServiceError,
    ServiceRequestError,
    ServiceUnavailable,
)
from latentrag_plugins.serve.stores import load_store, store_search
from tests.conftest import served_on_localhost, trace

uvicorn = pytest.importorskip("uvicorn")
from latentrag_plugins.serve.api import make_api  # noqa: E402
from latentrag_plugins.serve.service import Service  # noqa: E402

Q = "In which country was Marie Curie born?"
BLOCK_K, FAIL_K = 7, 9  # top_k values that make the test store wait at its gate, or fail


class MarkedStore:
    """The test store, searched as usual, except that searches for ``FAIL_K`` documents fail
    and, once :meth:`block` is called, searches for ``BLOCK_K`` wait at a gate."""

    def __init__(self, store) -> None:
        self.store, self.encoder_id, self.dim = store, store.encoder_id, store.dim
        self.entered, self.gate, self.pass_first = threading.Event(), threading.Event(), 0
        self.gate.set()

    def block(self, pass_first: int = 0) -> None:
        """Let ``pass_first`` searches for ``BLOCK_K`` through, then hold the others."""
        self.entered, self.gate, self.pass_first = threading.Event(), threading.Event(), pass_first

    def __len__(self) -> int:
        return len(self.store)

    def search(self, embedding, k):
        return self.search_batch(embedding[None], k)[0]

    def search_batch(self, embeddings, k):
        if k == FAIL_K:
            raise RuntimeError("the store is down")
        if k == BLOCK_K:
            self.pass_first -= 1
            if self.pass_first < 0:
                self.entered.set()
                assert self.gate.wait(60), "the test never opened the gate"
        return self.store.search_batch(embeddings, k)


@pytest.fixture(scope="module")
def served(model, store):
    """A replica's app over the test model and store, on a local port (uvicorn)."""
    marked = MarkedStore(store)
    config = ServeConfig(model="tiny", index="examples")
    service = Service(config, model=model, store=store_search(marked, model, "examples"))
    try:
        with served_on_localhost(make_api(service)) as url:
            yield service, marked, url
            marked.gate.set()
    finally:
        marked.gate.set()
        model.set_engine()  # the session's model gets a default engine back


@pytest.fixture
def client(served):
    with RemoteLatentRAG(served[2], timeout=30) as c:
        yield c
    served[1].gate.set()


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def comparable(result, score_digits: int | None = None) -> dict:
    """A result without what depends on the moment (timings, batch sizes); with
    ``score_digits``, document scores rounded (for a store built apart, whose vectors may differ
    in the last bits)."""
    out = result.model_dump(exclude={"timings_ms", "batch_size"})
    if score_digits is not None:
        for step in out["steps"]:
            for doc in step["docs"]:
                doc["score"] = round(doc["score"], score_digits)
    return out


# ---------------------------------------------------------------------------------- packaging
def test_importing_the_library_imports_no_server_packages():
    code = (
        "import sys, latentrag_plugins, latentrag_plugins.serve, latentrag_plugins.serve.client;"
        "print(sorted(m for m in ('ray', 'fastapi', 'uvicorn', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_extra_is_named(monkeypatch, tmp_path, capsys):
    from latentrag_plugins.cli.main import main

    for name in ("ray", "ray.serve"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "latentrag_plugins.serve.deployment", raising=False)
    with pytest.raises(ImportError, match=r'pip install "latentrag-plugins\[serve\]"'):
        from latentrag_plugins.serve import build_app  # noqa: F401
    (tmp_path / "manifest.json").write_text("{}")
    assert main(["serve", "--model", "demo", "--index", str(tmp_path)]) == 1
    assert "latentrag-plugins[serve]" in capsys.readouterr().err


def test_the_config_takes_one_store_and_the_cli_shows_its_defaults(tmp_path, capsys):
    from latentrag_plugins.cli import cmd_serve
    from latentrag_plugins.cli.main import main
    from latentrag_plugins.engine import EngineConfig

    assert ServeConfig.model_fields["max_batch"].default == EngineConfig().max_batch
    assert ServeConfig.model_fields["max_batch"].default == cmd_serve.MAX_BATCH
    assert (
        ServeConfig(model="m", index="i").ongoing_requests
        > ServeConfig(model="m", index="i").max_batch
    )
    for bad in ({}, {"index": "i", "store_factory": "a:b"}, {"store_factory": "no-colon"}):
        with pytest.raises(ValueError):
            ServeConfig(model="m", **bad)
    with pytest.raises(SystemExit):
        main(["serve", "--model", "demo"])
    assert "one of the arguments --index --store-factory is required" in capsys.readouterr().err
    assert main(["serve", "--model", "demo", "--index", str(tmp_path / "none")]) == 1
    assert "not a FAISS index directory" in capsys.readouterr().err
    assert main(["serve", "--model", "demo", "--store-factory", "no_such_module:make"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot import no_such_module" in err


# ---------------------------------------------------------------------------------- answers
def test_ask_returns_the_result_json_of_the_local_run(served, client, model, store):
    local = model.run(Q, store, min_steps=2)
    body = httpx.post(f"{served[2]}/v1/ask", json={"question": Q, "min_steps": 2}).json()
    assert set(body) == set(local.model_dump(mode="json"))  # as `latentrag ask --json` prints
    assert body["answer"] == local.answer and len(body["steps"]) == len(local.steps) >= 2
    assert comparable(client.ask(Q, min_steps=2)) == comparable(local)


def test_streamed_events_are_the_engines_sync_and_async(client, model, store):
    options = {"decode": True, "min_steps": 2, "max_steps": 2}
    local = model.engine.submit(Q, StoreSearch(store), **options)
    want = list(local.events())
    handle = client.submit(Q, **options)
    assert list(handle.events()) == want
    assert comparable(handle.result()) == comparable(local.result())
    assert [type(e) for e in want[:2]] == [ThoughtEvent, StepEvent] and want[1].docs

    async def read() -> tuple[list, list, object]:
        first = client.submit(Q, **options)
        got = [e async for e in first.aevents()]
        seen = []

        async def on_event(event) -> None:
            seen.append(event)

        return got, seen, await client.submit(Q, **options).aresult(on_event=on_event)

    got, seen, result = asyncio.run(read())
    assert got == want and seen == want and comparable(result) == comparable(local.result())


def test_health_tells_the_model_the_encoder_and_the_store(client, model):
    health = client.health()
    assert health["status"] == "ready" and health["store"]["documents"] == 28
    assert (client.encoder_id, client.dim) == (model.encoder_id, model.dim)
    assert client.config.model_dump() == model.config.model_dump()
    assert copy.deepcopy(client).url == client.url  # components may copy it


def test_the_openapi_schema_documents_the_request(served):
    spec = httpx.get(f"{served[2]}/openapi.json").json()
    body = spec["paths"]["/v1/ask"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["question"]
    assert {"top_k", "max_steps", "decode"} <= set(body["schema"]["properties"])
    assert "/v1/ask/stream" in spec["paths"] and "/health" in spec["paths"]


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "the body is not JSON"),
        (b'["a list"]', "must be a JSON object"),
        (b"{}", "question: required"),
        (b'{"question": "  "}', "question is empty"),
        (b'{"question": "q", "topk": 3}', "topk: unknown option (options: top_k"),
        (b'{"question": "q", "top_k": "3"}', "top_k: Input should be a valid integer"),
        (b'{"question": "q", "top_k": 0}', "top_k: Input should be greater than or equal to 1"),
        (('{"question": "' + "x" * 20_001 + '"}').encode(), "at most 20000 characters"),
        (('{"question": "' + "word " * 3000 + '"}').encode(), "question is too long"),
    ],
)
def test_bad_requests_get_400_with_a_clear_message(served, body, says):
    for path in ("/v1/ask", "/v1/ask/stream"):
        resp = httpx.post(served[2] + path, content=body)
        assert resp.status_code == 400
        assert resp.json()["type"] == "error" and says in resp.json()["message"]


def test_the_client_refuses_bad_requests(client):
    with pytest.raises(ValueError, match="topk: unknown option"):
        client.submit(Q, topk=3)
    with pytest.raises(ValueError, match="question is empty"):
        client.ask(" ")
    handle = client.submit("word " * 3000)
    with pytest.raises(ServiceRequestError, match="question is too long") as err:
        handle.result()
    assert err.value.status == 400 and client.url in str(err.value)
    assert isinstance(err.value, ValueError)


def test_a_store_failure_fails_that_request_alone(served, client, model, store):
    service, marked, url = served
    marked.block()
    waiting = client.submit(Q, top_k=BLOCK_K, max_steps=1, min_steps=1)
    assert marked.entered.wait(30)  # in flight, at its search
    resp = httpx.post(f"{url}/v1/ask", json={"question": Q, "top_k": FAIL_K, "min_steps": 1})
    assert resp.status_code == 502 and "the store is down" in resp.json()["message"]
    with pytest.raises(ServiceError, match="the store is down") as err:
        client.submit(Q, top_k=FAIL_K, min_steps=1).result()
    assert err.value.status == 502
    marked.gate.set()
    want = model.run(Q, store, top_k=BLOCK_K, max_steps=1, min_steps=1)
    assert trace([waiting.result()]) == trace([want])  # it shared passes: scores may round apart


@pytest.mark.parametrize("how", ["cancel", "close the stream", "cancel the task"])
def test_a_client_that_goes_away_cancels_its_request(served, client, how):
    """The store holds the request's second search; the client goes away; the service's engine
    drops the request while the search is still held (so it did not finish)."""
    service, marked, _ = served
    marked.block(pass_first=1)
    handle = client.submit(Q, top_k=BLOCK_K, min_steps=2, max_steps=2)
    if how == "cancel the task":

        async def read_then_cancel() -> None:
            task = asyncio.ensure_future(handle.aresult())
            await asyncio.to_thread(marked.entered.wait, 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(read_then_cancel())
    else:
        events = handle.events()
        assert isinstance(next(events), StepEvent)  # the first search went through
        assert marked.entered.wait(30)
        handle.cancel() if how == "cancel" else events.close()
        with pytest.raises(RequestCancelled):
            handle.next_event(5)
    wait_until(lambda: service.engine.load == 0, "the service dropped the request")
    assert not marked.gate.is_set()


def test_a_service_that_is_down_or_slow_gives_a_clear_error(served):
    with socket_closed() as url, RemoteLatentRAG(url, timeout=5) as down:
        with pytest.raises(ServiceUnavailable, match=f"{url}.*cannot connect"):
            down.health()
        with pytest.raises(ServiceUnavailable, match=url):
            down.submit(Q).result()
    with pytest.raises(RuntimeError, match="closed"):
        down.submit(Q)
    service, marked, url = served
    marked.block()
    with (
        RemoteLatentRAG(url, timeout=0.5) as slow,
        pytest.raises(ServiceUnavailable, match=r"no answer within 0.5 s"),
    ):
        slow.ask(Q, top_k=BLOCK_K, min_steps=1)
    marked.gate.set()
    wait_until(lambda: service.engine.load == 0, "the slow request ended")


class socket_closed:  # noqa: N801 (a context manager used as a function)
    """A local URL where nothing listens."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"http://127.0.0.1:{s.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        pass


# ---------------------------------------------------------------------------------- stores
def faiss_factory(model):
    """A store factory (for ``load_store``): the example corpus' FAISS index."""
    from latentrag_plugins.store.corpus import read_corpus
    from latentrag_plugins.store.faiss_store import FaissStore
    from tests.conftest import EXAMPLES

    return FaissStore.build(
        model.doc_tower, read_corpus(EXAMPLES / "corpus.jsonl"), show_progress=False
    )


def test_store_factories_give_faiss_langchain_and_llama_index_searches(model, store):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    from latentrag_plugins.langchain import LatentRAGEmbeddings
    from latentrag_plugins.llama_index import LatentRAGEmbedding

    config = ServeConfig(model="tiny", store_factory="tests.test_serve:faiss_factory")
    faiss = load_store(config, model)
    assert (faiss.kind, faiss.documents, faiss.source) == (
        "faiss",
        28,
        "tests.test_serve:faiss_factory()",
    )
    want = model.run(Q, store, min_steps=2)
    got = model.engine.submit(Q, faiss.search, min_steps=2).result()
    assert comparable(got, score_digits=5) == comparable(want, score_digits=5)

    texts, ids = store.texts, store.ids
    meta = [{"source": f"corpus/{i}"} for i in ids]
    lc = InMemoryVectorStore(LatentRAGEmbeddings(model=model))
    lc.add_documents(
        [Document(id=i, page_content=t, metadata=m) for i, t, m in zip(ids, texts, meta)]
    )
    li = VectorStoreIndex(
        [TextNode(id_=i, text=t, metadata=m) for i, t, m in zip(ids, texts, meta)],
        embed_model=LatentRAGEmbedding(model=model),
    )
    want_ids = [[d.id for d in s.docs] for s in want.steps]
    for kind, served_store in (
        ("langchain", store_search(lc, model)),
        ("llama_index", store_search(li, model)),
    ):

        async def run(search=served_store.search):  # an async search runs on this loop
            return await model.engine.submit(Q, search, min_steps=2).aresult()

        got = asyncio.run(run())
        assert served_store.kind == kind
        docs = got.steps[0].docs  # the best hit is FAISS's (lower ranks may break near-ties apart)
        assert len(docs) == 3 and docs[0].id == want_ids[0][0]
        assert all(d.metadata["source"] == f"corpus/{d.id}" for s in got.steps for d in s.docs)
    with pytest.raises(StoreError, match="not a store"):
        store_search(object(), model)


# ---------------------------------------------------------------------------------- load test
def test_the_load_test_counts_answers_and_checks_them(served, model, store, capsys):
    from latentrag_plugins.serve.loadtest import main, run_load, table

    want = model.run(Q, store, min_steps=1).answer
    ends = []
    report = run_load(
        served[2], [Q], requests=8, concurrency=4, expected={Q: want}, endpoint="both",
        options={"min_steps": 1}, on_answer=ends.append,
    )  # fmt: skip
    assert (report.answered, report.errors, report.mismatches, ends) == (8, {}, 0, [*range(1, 9)])
    assert report.requests_per_s > 0 and report.percentile_ms(50) <= report.percentile_ms(95)
    wrong = run_load(served[2], [Q], requests=2, concurrency=2, expected={Q: want + "!"})
    assert wrong.mismatches == 2 and "| ? | 2 | 2 |" in table([wrong])
    args = ["--url", served[2], "--no-check", "--requests", "4", "--concurrency", "2", "--json"]
    assert main(args) == 0
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["answered"] == 4 and summary["errors"] == {}

"""The service on a local Ray instance: replicas answer as the local model does, a client that
goes away cancels its request, a store failure fails one request, and a killed replica loses no
request silently and comes back."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from latentrag_plugins.engine import RequestCancelled, StepEvent  # noqa: E402
from latentrag_plugins.serve import (  # noqa: E402
    RemoteLatentRAG,
    ServeConfig,
    ServiceError,
    ServiceStartError,
    ServiceUnavailable,
)
from latentrag_plugins.serve.launcher import launch, stop  # noqa: E402
from latentrag_plugins.serve.loadtest import run_load  # noqa: E402
from tests.conftest import trace  # noqa: E402

TESTS = Path(__file__).resolve().parent
BLOCK_K, FAIL_K = 7, 9  # top_k values that make the store hold a search, or fail
QUESTIONS = [
    "In which country was Marie Curie born?",
    "Who wrote the theory of relativity?",
    "What is the capital of Austria?",
    "Where did the composer of the Magic Flute live?",
]
OPTIONS = {"min_steps": 1, "max_steps": 2}  # the random test model retrieves at least once


def marked_store(model):
    """The store factory the replicas run: the test index, except that a search for
    ``FAIL_K`` documents fails and the second search for ``BLOCK_K`` holds (a minute)."""
    from latentrag_plugins.store.faiss_store import FaissStore

    index = FaissStore.load(os.environ["LATENTRAG_TEST_INDEX"])
    return MarkedStore(index)


class MarkedStore:
    def __init__(self, store) -> None:
        self.store, self.encoder_id, self.dim = store, store.encoder_id, store.dim
        self.block_k_searches = 0

    def __len__(self) -> int:
        return len(self.store)

    def search(self, embedding, k):
        return self.search_batch(embedding[None], k)[0]

    def search_batch(self, embeddings, k):
        if k == FAIL_K:
            raise RuntimeError("the store is down")
        if k == BLOCK_K:
            self.block_k_searches += 1
            if self.block_k_searches == 2:
                time.sleep(60)  # in a worker thread: a cancelled request does not wait for it
        return self.store.search_batch(embeddings, k)


@pytest.fixture(scope="module")
def service(model, store, tmp_path_factory):
    """The test model and index served by one replica on a local Ray instance."""
    tmp = tmp_path_factory.mktemp("serve")
    model.save_pretrained(tmp / "model")
    store.save(tmp / "index")
    env = {
        "LATENTRAG_TEST_INDEX": str(tmp / "index"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    config = ServeConfig(
        model=str(tmp / "model"), store_factory="test_serve_ray:marked_store", replicas=1
    )
    try:
        ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env}
        )
        url = launch(config, port=free_port())
        yield config, url
    finally:
        stop()  # and ray.shutdown()
        for sig, handler in handlers.items():  # Ray's driver replaced them
            signal.signal(sig, handler)


@pytest.fixture(scope="module")
def expected(model, store):
    return {q: model.run(q, store, **OPTIONS) for q in QUESTIONS}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)
    return value


def test_a_replica_streams_the_local_models_answer(service, expected):
    with RemoteLatentRAG(service[1]) as client:
        health = client.health()
        assert health["status"] == "ready" and health["store"]["class"] == "MarkedStore"
        for q, want in expected.items():
            handle = client.submit(q, **OPTIONS)
            events = list(handle.events())
            assert trace([handle.result()]) == trace([want])
            steps = [e for e in events if isinstance(e, StepEvent)]
            assert [[d.id for d in e.docs] for e in steps] == [
                [d.id for d in s.docs] for s in want.steps
            ]
            assert trace([client.ask(q, **OPTIONS)]) == trace([want])


def test_a_client_that_goes_away_cancels_its_request_on_ray(service):
    """The replica's store holds the request's second search for a minute; the client leaves
    after the first step; the replica's engine drops the request well before."""
    with RemoteLatentRAG(service[1]) as client:
        handle = client.submit(QUESTIONS[0], top_k=BLOCK_K, min_steps=2, max_steps=2)
        assert isinstance(handle.next_event(30), StepEvent)
        wait_until(lambda: client.health()["engine"]["in_flight"] == 1, "the search holds")
        handle.cancel()
        with pytest.raises(RequestCancelled):
            handle.result()
        wait_until(lambda: client.health()["engine"]["in_flight"] == 0, "the replica drops it", 30)


def test_a_store_failure_fails_that_request_alone_on_ray(service, expected):
    q = QUESTIONS[0]
    with RemoteLatentRAG(service[1]) as client:
        failing = client.submit(q, top_k=FAIL_K, **OPTIONS)
        fine = client.submit(q, **OPTIONS)
        with pytest.raises(ServiceError, match="the store is down") as err:
            failing.result()
        assert err.value.status == 502 and service[1] in str(err.value)
        assert trace([fine.result()]) == trace([expected[q]])


def test_a_replica_that_cannot_start_says_why(service, tmp_path):
    (tmp_path / "manifest.json").write_text('{"encoder_id": "other"}')
    broken = service[0].model_copy(
        update={"store_factory": None, "index": str(tmp_path), "num_cpus": 0.5}
    )
    port = int(service[1].rsplit(":", 1)[1])
    try:
        with pytest.raises(ServiceStartError, match=r"did not start: StoreError: .*manifest"):
            launch(
                broken, port=port, name="broken", route_prefix="/broken",
                max_constructor_retry_count=1,
            )  # fmt: skip
    finally:
        serve.delete("broken")
    with RemoteLatentRAG(f"{service[1]}/broken") as client:
        with pytest.raises(ServiceUnavailable) as err:  # the proxy's 404 (503 while it deletes)
            client.health()
        assert err.value.status in (404, 503) and client.url in str(err.value)


def test_the_application_takes_ray_serve_options():
    from latentrag_plugins.serve import app_builder, build_app

    config = ServeConfig(model="m", index="i", replicas=3)
    autoscaled = build_app(config, autoscaling_config={"min_replicas": 1, "max_replicas": 4})
    assert type(autoscaled) is type(app_builder({"model": "m", "index": "i", "replicas": "2"}))
    with pytest.raises(ValueError, match="exactly one"):
        app_builder({"model": "m"})


def replica_pids(client: RemoteLatentRAG, checks: int = 20) -> set[int]:
    """The replicas that answered some health checks (Ray spreads them over the replicas)."""
    pids = set()
    for _ in range(checks):
        with contextlib.suppress(ServiceError):  # a replica that just died
            pids.add(client.health()["replica"]["pid"])
    return pids


def test_two_replicas_answer_a_load_as_the_local_model(service, expected):
    config, url = service
    launch(config.model_copy(update={"replicas": 2}), port=int(url.rsplit(":", 1)[1]))
    answers = {q: r.answer for q, r in expected.items()}
    report = run_load(
        url, QUESTIONS, requests=48, concurrency=16, expected=answers, endpoint="both",
        options=OPTIONS,
    )  # fmt: skip
    assert (report.errors, report.mismatches, report.answered) == ({}, 0, 48)
    with RemoteLatentRAG(url) as client:
        wait_until(lambda: len(replica_pids(client)) == 2, "both replicas answer")


def test_a_killed_replica_loses_no_request_and_comes_back(service, expected):
    """Mid-load, one replica's process is killed: every request ends with its answer or a
    ServiceError naming the service; Ray starts a new replica, which serves."""
    url = service[1]
    answers = {q: r.answer for q, r in expected.items()}
    with RemoteLatentRAG(url) as client:
        pids = wait_until(lambda: len(p := replica_pids(client)) == 2 and p, "both replicas")
        victim = min(pids)

        def on_answer(ended: int) -> None:
            if ended == 8:
                os.kill(victim, signal.SIGKILL)

        report = run_load(
            url, QUESTIONS, requests=48, concurrency=16, expected=answers, endpoint="both",
            options=OPTIONS, on_answer=on_answer,
        )  # fmt: skip
        assert report.answered + sum(report.errors.values()) == 48 and report.answered >= 8
        assert report.mismatches == 0
        assert all(e.startswith("Service") and url in e for e in report.errors), report.errors
        back = wait_until(
            lambda: len(p := replica_pids(client) - {victim}) == 2 and p, "a new replica", 120
        )
        assert len(back - pids) == 1
        assert trace([client.ask(q, **OPTIONS) for q in QUESTIONS]) == trace(expected.values())

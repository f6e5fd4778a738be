"""``latentrag serve`` end to end: it starts Ray and the service, answers as the local model,
and stops everything on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray.serve")

from latentrag_plugins.serve import RemoteLatentRAG  # noqa: E402
from tests.conftest import trace  # noqa: E402
from tests.test_serve_ray import OPTIONS, QUESTIONS, free_port  # noqa: E402


@pytest.fixture
def command(model, store, tmp_path):
    """The test model and index saved, and a port for the service."""
    model.save_pretrained(tmp_path / "model")
    store.save(tmp_path / "index")
    port = free_port()
    args = ["serve", "--model", str(tmp_path / "model"), "--index", str(tmp_path / "index")]
    return [*args, "--port", str(port), "--num-cpus", "0.5"], f"http://127.0.0.1:{port}"


def test_serve_answers_and_stops_on_sigterm(command, model, store, tmp_path):
    args, url = command
    log = tmp_path / "serve.log"  # a file, not a pipe: Ray's logs would fill a pipe
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "latentrag_plugins.cli.main", *args],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 240
        while f"at {url} (POST /v1/ask" not in log.read_text():  # it says when it serves
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.2)
        with RemoteLatentRAG(url, timeout=30) as client:
            assert client.health()["status"] == "ready"
            q = QUESTIONS[0]
            assert trace([client.ask(q, **OPTIONS)]) == trace([model.run(q, store, **OPTIONS)])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 143, log.read_text()[-3000:]
        assert log.read_text().rstrip().endswith("terminated")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

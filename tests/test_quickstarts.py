"""The LangChain and LlamaIndex quickstarts run offline end to end, on current agent APIs
(``langchain.agents.create_agent``; LlamaIndex's workflow ``FunctionAgent``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import EXAMPLES


def run_example(name: str, *python_flags: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, *python_flags, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=EXAMPLES.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_langchain_quickstart_runs_without_deprecated_apis():
    pytest.importorskip("langchain_core")
    pytest.importorskip("langchain.agents")
    # LangChain's and LangGraph's deprecation warnings are DeprecationWarnings: any is an error.
    out = run_example("langchain_quickstart.py", "-W", "error::DeprecationWarning")
    assert "chain answer:" in out and "agent: The corpus says:" in out


def test_llama_index_quickstart_runs():
    pytest.importorskip("llama_index.core")
    out = run_example("llama_index_quickstart.py")
    assert "agent answer:" in out and "same nodes after reload: True" in out

"""The CLI never loses a user's files, checks what it can before any work, and says what went
wrong in one line: outputs that are not the command's own, outputs that are inputs, devices
this machine lacks, bad numbers and text, interrupted and killed writes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from latentrag_plugins.cli.main import main
from tests.conftest import EXAMPLES

CORPUS, QUESTIONS = EXAMPLES / "corpus.jsonl", EXAMPLES / "questions.jsonl"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny LatentRAG checkpoint and a FAISS index of the example corpus."""
    root = tmp_path_factory.mktemp("cli")
    model, index = root / "m", root / "idx"
    assert main(["init", "--base-model", "random:tiny", str(model)]) == 0
    assert main(["index", str(CORPUS), str(index), "--model", str(model)]) == 0
    return model, index


def fails(capsys: pytest.CaptureFixture[str], argv: list[Any], said: str) -> str:
    """Run ``latentrag argv``: it must fail with one line of error saying ``said``."""
    assert main([str(a) for a in argv]) == 1, argv
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
    return err


def test_index_and_prepare_never_replace_a_directory_that_is_not_theirs(built, tmp_path, capsys):
    from latentrag_plugins.errors import StoreError
    from latentrag_plugins.store.faiss_store import FaissStore

    model, index = built
    project = tmp_path / "project"  # someone's project that happens to have a manifest.json
    project.mkdir()
    (project / "manifest.json").write_text('{"name": "my-webapp"}')
    (project / "thesis.tex").write_text("years of work")
    fails(capsys, ["index", CORPUS, project, "--model", model], "not a FaissStore")
    assert (project / "thesis.tex").read_text() == "years of work"
    # Swapped arguments: prepared data would replace the index.
    fails(
        capsys,
        ["prepare", "trajectories.jsonl", index, "--model", model, "--index", index],
        "is a latentrag-faiss-store directory",
    )
    assert (index / "index.faiss").is_file()
    prepared = tmp_path / "prep"
    prepared.mkdir()
    (prepared / "manifest.json").write_text('{"format": "latentrag-prepared"}')
    fails(capsys, ["index", CORPUS, prepared, "--model", model], "latentrag-prepared")
    with pytest.raises(StoreError, match="is a latentrag-prepared directory"):
        FaissStore.load(prepared)
    (index / "notes.txt").write_text("mine")  # a store's own directory, plus a user's file
    fails(capsys, ["index", CORPUS, index, "--model", model], "notes.txt")
    (index / "notes.txt").unlink()
    assert main(["index", str(CORPUS), str(index), "--model", str(model)]) == 0  # its own: fine


def test_an_output_that_is_an_input_is_refused_before_any_work(built, tmp_path, capsys):
    from latentrag_plugins.errors import LatentRAGError
    from latentrag_plugins.training.transcripts import import_transcripts

    model, index = built
    questions = tmp_path / "q.jsonl"
    questions.write_bytes(QUESTIONS.read_bytes())
    base = ["eval", "--model", model, "--index", index, "--questions", questions]
    fails(capsys, [*base, "--json", questions], "is also")
    fails(
        capsys,
        [*base, "--json", tmp_path / "r.json", "--predictions", tmp_path / "r.json"],
        "is also",
    )
    assert questions.read_bytes() == QUESTIONS.read_bytes()
    transcripts = tmp_path / "t.jsonl"
    transcripts.write_text('{"question": "q", "answers": ["a"], "transcript": "x"}\n')
    fails(capsys, ["import-trajectories", transcripts, transcripts], "is also")
    with pytest.raises(LatentRAGError, match="is the input file too"):  # the library checks too
        import_transcripts(transcripts, transcripts)
    fails(
        capsys, ["import-trajectories", transcripts, tmp_path / "out.jsonl"], "no trajectory kept"
    )
    assert not (tmp_path / "out.jsonl").exists()


def test_world_replaces_only_a_world_and_all_of_it_at_once(tmp_path, capsys, monkeypatch):
    import latentrag_plugins.io_utils as io_utils

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "corpus.jsonl").write_text('{"id": "x", "contents": "my corpus"}\n')
    world = ["world", "--size", "small", "--search", "lexical", "--json", "--seed"]
    fails(capsys, [*world, 3, "--out", mine], "not a world directory")
    assert "my corpus" in (mine / "corpus.jsonl").read_text()
    out = tmp_path / "world"
    assert main([*world, "0", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = io_utils.write_jsonl_atomic, []

    def interrupted(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(io_utils, "write_jsonl_atomic", interrupted)
    assert main([*world, "7", "--out", str(out)]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the seed-0 world, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*world, "7", "--out", str(out)]) == 0  # a world replaces a world
    assert json.loads((out / "world.json").read_text())["seed"] == 7


def test_train_and_build_refuse_outputs_they_would_clobber(built, tmp_path, capsys):
    model, _ = built
    train = ["train", "--model", model, "--data", tmp_path / "none", "--no-progress"]
    fails(capsys, [*train, "--out", model], "is the starting model")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    fails(capsys, [*train, "--out", tmp_path / "mine"], "not a training run")
    fails(capsys, ["demo", "--build", tmp_path / "mine", "--preset", "test"], "not an empty")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_a_device_this_machine_lacks_is_a_clear_error(built, tmp_path, capsys, monkeypatch):
    import torch

    from latentrag_plugins.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")
    model, _ = built
    fails(capsys, ["index", CORPUS, tmp_path / "i", "--model", model, "--device", "cuda"], "CUDA")


def test_bad_numbers_and_text_are_refused_in_one_line(built, tmp_path, capsys):
    from latentrag_plugins.training.preparation import prepare

    model, index = built
    with pytest.raises(SystemExit) as exc:
        main(["index", str(CORPUS), str(tmp_path / "i"), "--batch-size", "0"])
    assert exc.value.code == 2 and "at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive finite"):
        prepare(None, None, [], beta=float("nan"))  # type: ignore[arg-type]
    err = fails(
        capsys, ["init", "--base-model", "random:tiny", tmp_path / "m", "--n-think", "0"], "n_think"
    )
    assert (
        "invalid LatentRAGConfig: n_think (--n-think): Input should be greater than or equal to 1 (got 0)"
        in err
    )
    fails(capsys, ["ask", "--model", model, "--index", index, "caf\udce9?"], "not valid UTF-8")
    fails(
        capsys, ["init", "--base-model", tmp_path / "no-such-dir", tmp_path / "m"], "no such local"
    )


def test_eval_checks_every_question_before_any_work(built, tmp_path, capsys):
    model, index = built
    lines = QUESTIONS.read_text().splitlines()[:2]
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join([*lines, lines[0]]) + "\n")
    report = tmp_path / "r.json"
    base = ["eval", "--model", model, "--index", index, "--questions", questions, "--json", report]
    fails(capsys, base, "q.jsonl:3: duplicate id 'q0'")
    long = {"id": "long", "question": "Where? " * 5000, "golden_answers": ["x"]}
    questions.write_text("\n".join([*lines, json.dumps(long)]) + "\n")
    fails(capsys, base, "question 'long'")
    assert not report.exists()


def test_a_termination_cleans_up_like_an_interrupt(tmp_path, capsys, monkeypatch):
    from latentrag_plugins.cli import cmd_world
    from latentrag_plugins.io_utils import atomic_path

    out = tmp_path / "out"

    def killed(args: Any) -> int:
        with atomic_path(out) as scratch:
            scratch.write_text("half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the signal arrives first
        return 0

    monkeypatch.setattr(cmd_world, "run", killed)
    assert main(["world", "--out", str(out)]) == 143
    assert "terminated" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_scratch_left_by_a_killed_save_is_swept_a_day_later(tmp_path):
    from latentrag_plugins.io_utils import write_text_atomic

    old, fresh = tmp_path / ".x.abcd1234", tmp_path / ".x.wxyz9876"
    for d in (old, fresh):
        (d / "tmp").mkdir(parents=True)
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    write_text_atomic(tmp_path / "x", "hi")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.wxyz9876", "x"]  # may be under way


def test_a_closed_stdout_is_no_error_but_another_broken_pipe_is(monkeypatch, capsys):
    from latentrag_plugins.cli import cmd_world

    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError

        def flush(self) -> None:
            pass

        def fileno(self) -> int:
            return 1

    dup2: list[int] = []
    monkeypatch.setattr(cmd_world, "run", lambda args: print("a summary") or 0)
    monkeypatch.setattr(os, "dup2", lambda fd, to: dup2.append(to))
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["world", "--out", "x"]) == 0 and dup2 == [1]
    monkeypatch.undo()

    def worker_pipe(args: Any) -> int:
        raise BrokenPipeError("a worker's pipe")

    monkeypatch.setattr(cmd_world, "run", worker_pipe)
    fails(capsys, ["world", "--out", "x"], "a worker's pipe")


def test_the_current_directory_is_never_swapped_away(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails(capsys, ["world", "--size", "small", "--search", "lexical", "--out", "."], "current")
    assert list(tmp_path.iterdir()) == []


def test_jsonl_inputs_name_a_directory_and_accept_a_bom(tmp_path):
    from latentrag_plugins.errors import LatentRAGError
    from latentrag_plugins.io_utils import read_jsonl

    with pytest.raises(LatentRAGError, match="is a directory"):
        list(read_jsonl(tmp_path))
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"id": "a", "contents": "x"}\n')
    assert [obj for _, obj in read_jsonl(bom)] == [{"id": "a", "contents": "x"}]

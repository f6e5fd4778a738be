"""CLI smoke tests: init -> index -> ask --json, --help everywhere, clean errors."""

from __future__ import annotations

import json

import pytest

from latentrag_plugins.cli.main import COMMANDS, build_parser, main
from tests.conftest import EXAMPLES


def test_every_command_has_help(capsys):
    parser = build_parser()
    names = [a for a in parser._subparsers._group_actions[0].choices]  # type: ignore[union-attr]
    assert {"init", "index", "ask"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out
    assert set(names) <= set(COMMANDS)


def test_a_bare_json_flag_means_stdout_for_eval_and_bench():
    for cmd in (["eval", "--model", "m", "--index", "i", "--questions", "q"], ["bench"]):
        assert build_parser().parse_args([*cmd, "--json"]).json == "-"


def test_init_index_ask_json(tmp_path, capsys):
    model_dir, index_dir = tmp_path / "m", tmp_path / "idx"
    assert main(["init", "--base-model", "random:tiny", str(model_dir), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["kind"] == "latentrag" and made["path"] == str(model_dir)
    assert made["config"] == json.loads((model_dir / "config.json").read_text())
    assert (
        main(["index", str(EXAMPLES / "corpus.jsonl"), str(index_dir), "--model", str(model_dir)])
        == 0
    )
    assert json.loads((index_dir / "manifest.json").read_text())["count"] == 28
    capsys.readouterr()
    q = "In which country was Marie Curie born?"
    assert (
        main(["ask", "--model", str(model_dir), "--index", str(index_dir), q, "--json", "--decode"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {
        "answer",
        "steps",
        "timings_ms",
        "forward_passes",
        "input_tokens",
        "output_tokens",
        "batch_size",
    }
    assert set(out["timings_ms"]) == {
        "prefill",
        "reasoning",
        "retrieval",
        "answer",
        "decode",
        "total",
    }
    assert out["forward_passes"] >= 2
    assert all("thought" in s for s in out["steps"])
    assert main(["ask", "--model", str(model_dir), "--index", str(index_dir), q]) == 0
    assert "answer:" in capsys.readouterr().out


def test_user_mistakes_exit_nonzero_without_traceback(tmp_path, capsys):
    assert main(["ask", "--model", str(tmp_path / "nope"), "--index", str(tmp_path), "q"]) == 1
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "x").write_text("")
    assert main(["init", "--base-model", "random:tiny", str(model_dir)]) == 1
    assert "not empty" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "contents": "ok"}\nnot json\n')
    assert main(["index", str(bad), str(tmp_path / "i")]) == 1
    assert "bad.jsonl:2" in capsys.readouterr().err
    # Output paths that cannot be written are refused before any work, without a traceback.
    (tmp_path / "file").write_text("")
    for argv, said in [
        (
            ["eval", "--model", "demo", "--index", ".", "--questions", "q", "--json", "."],
            "directory",
        ),
        (["bench", "--json", str(tmp_path / "file" / "r.json")], "is a file"),
        (["world", "--seed", "1", "--out", str(tmp_path / "file")], "is a file"),
        (["init", "--base-model", "random:tiny", str(tmp_path / "file")], "Not a directory"),
        (["demo", "--json", "--question", "Who?"], "leave out --question"),
    ]:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, argv


def test_a_missing_extra_is_named_before_any_work(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    argv = ["eval", "--model", "no-such-model", "--index", ".", "--questions", "q", "--plot"]
    assert main([*argv, str(tmp_path / "c.png")]) == 1  # before the model would fail to load
    err = capsys.readouterr().err
    assert "[plot]" in err and "Traceback" not in err
    assert main(["bench", "--plot", str(tmp_path / "b.png")]) == 1
    assert "[plot]" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert main(["index", str(EXAMPLES / "corpus.jsonl"), str(tmp_path / "idx")]) == 1
    err = capsys.readouterr().err
    assert "[faiss]" in err and "Traceback" not in err


def test_init_checks_settings_before_building_a_model(tmp_path, capsys, monkeypatch):
    from latentrag_plugins import model_zoo

    def built(*args, **kwargs):
        raise AssertionError("a model was built before the settings were checked")

    monkeypatch.setattr(model_zoo, "build_llm", built)
    for extra in (["--n-think", "0"], ["--explicit", "--max-steps", "-1"]):
        argv = ["init", "--base-model", "random:tiny", str(tmp_path / "m"), *extra]
        assert main(argv) == 1, extra
        assert "Traceback" not in capsys.readouterr().err
    monkeypatch.undo()
    argv = ["init", "--base-model", "random:tiny", str(tmp_path / "e"), "--explicit", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "explicit"


def test_two_common_slips_get_a_clear_way_out(tmp_path, capsys):
    """An index path that is a corpus file, and a directory that holds no checkpoint."""
    (tmp_path / "empty").mkdir()
    corpus = str(EXAMPLES / "corpus.jsonl")
    assert main(["ask", "--model", "demo", "--index", corpus, "Who?"]) != 0
    assert "`latentrag index corpus.jsonl INDEX_DIR`" in capsys.readouterr().err
    assert main(["ask", "--model", str(tmp_path / "empty"), "--index", corpus, "Who?"]) != 0
    assert "not a LatentRAG checkpoint (no config.json)" in capsys.readouterr().err

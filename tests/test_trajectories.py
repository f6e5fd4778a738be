"""Trajectory schema (line-numbered errors) and transcript import (Search-R1, AutoRefine)."""

from __future__ import annotations

import json

import pytest

from latentrag_plugins.cli.main import main
from latentrag_plugins.training.trajectories import (
    Trajectory,
    TrajectoryError,
    read_trajectories,
    write_trajectories,
)
from latentrag_plugins.training.transcripts import (
    doc_id,
    import_transcripts,
    parse_documents,
)

GOOD = {
    "id": "q1",
    "question": "Where was Marie Curie born?",
    "answers": ["Warsaw"],
    "steps": [
        {
            "thought": "I need her birthplace.",
            "subquery": "Marie Curie birthplace",
            "documents": [{"id": "d0", "contents": "Marie Curie\nBorn in Warsaw."}],
        }
    ],
    "final_thought": "She was born in Warsaw.",
    "answer": "Warsaw",
}


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_schema_round_trip(tmp_path):
    trajs = [Trajectory.model_validate(GOOD), Trajectory.model_validate({**GOOD, "id": 7})]
    assert trajs[1].id == "7"
    n = write_trajectories(tmp_path / "t.jsonl", trajs)
    assert n == 2
    back = read_trajectories(tmp_path / "t.jsonl")
    assert back == trajs
    assert back[0].steps[0].documents[0].as_retrieved().title == "Marie Curie"


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("{not json", "invalid JSON"),
        ({k: v for k, v in GOOD.items() if k != "answer"}, "answer: Field required"),
        ({**GOOD, "steps": [{"thought": "t", "documents": []}]}, "steps.0.subquery"),
        ({**GOOD, "steps": [{"thought": "t", "subquery": "  "}]}, "subquery is empty"),
        ({**GOOD, "question": " "}, "question"),
        ({**GOOD, "steps": [{"thought": "t", "subquery": "s", "documents": [{"id": "x"}]}]},
         "steps.0.documents.0.contents"),
        (["a list"], "expected a JSON object"),
        (GOOD, "duplicate trajectory id 'q1' (first on line 1)"),
    ],
)  # fmt: skip
def test_bad_line_reports_line_number(tmp_path, bad, needle):
    path = _write(tmp_path / "t.jsonl", [GOOD, "", bad])  # blank line 2 is skipped
    with pytest.raises(TrajectoryError) as exc:
        read_trajectories(path)
    assert "t.jsonl:3:" in str(exc.value)
    assert needle in str(exc.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(TrajectoryError, match="not found"):
        read_trajectories(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(TrajectoryError, match="no trajectories"):
        read_trajectories(tmp_path / "e.jsonl")


def test_parse_documents():
    block = (
        'Doc 1(Title: "Paris (film)") A 1999 film.\nIt ran long.\n'
        "Doc 2(Title: Warsaw) Capital of Poland.\n"
        "Doc 3 (Title: Odd) text with (parens) inside"
    )
    docs = parse_documents(block)
    assert [d.contents for d in docs] == [
        '"Paris (film)"\nA 1999 film.\nIt ran long.',  # quoted, as in the wiki-18 corpus
        "Warsaw\nCapital of Poland.",
        "Odd\ntext with (parens) inside",
    ]
    assert docs[1].id == doc_id("Warsaw", "Capital of Poland.")  # stable across runs
    assert parse_documents("  plain text  ")[0].contents == "plain text"
    assert parse_documents("   ") == []


SR1 = (
    "<think> I need to find where Marie Curie was born. </think>\n"
    "<search> Marie Curie birthplace </search>\n\n"
    "<information>Doc 1(Title: Marie Curie) Marie Curie was born in Warsaw.\n"
    "Doc 2(Title: Poland) Poland is a country.\n</information>\n\n"
    "<think> She was born in Warsaw. Which country? </think>\n"
    "<search> Warsaw country </search>\n"
    "<information>Doc 1(Title: Warsaw) Warsaw is the capital of Poland.</information>\n"
    "<think> Warsaw is in Poland. </think>\n<answer> Poland </answer><|im_end|>"
)
PROMPT = (
    "<|im_start|>user\nAnswer the given question. You must conduct reasoning inside <think> "
    "and </think> ... call a search engine by <search> query </search> ... For example, "
    "<answer> Beijing </answer>. Question: In which country was Marie Curie born?\n"
    "<|im_end|>\n<|im_start|>assistant\n"
)
AUTOREFINE = (
    "<think> Find the birthplace. </think><search> Marie Curie born </search>"
    "<information>Doc 1(Title: Marie Curie) Born in Warsaw.</information>"
    "<refine> Marie Curie was born in Warsaw. </refine>"
    "<think> Now the country. </think><search> Warsaw country </search>"
    "<information>Doc 1(Title: Warsaw) Capital of Poland.</information>"
    "<refine> Warsaw is in Poland. </refine><think> Done. </think><answer> poland. </answer>"
)


def _transcripts(tmp_path):
    q = "In which country was Marie Curie born?"
    rows = [
        {"id": "a", "question": q, "golden_answers": ["Poland"], "transcript": SR1},
        {"id": 7, "question": q, "answers": ["Poland"], "transcript": PROMPT + SR1},  # int id
        {"question": q, "answers": ["France"], "transcript": SR1},  # wrong answer
        {"question": q, "answers": ["Poland"], "transcript": "<think> hmm </think>"},  # no answer
        {"question": q, "answers": ["Poland"], "transcript": AUTOREFINE},
    ]
    return _write(tmp_path / "in.jsonl", rows)


def test_import_search_r1(tmp_path):
    stats = import_transcripts(_transcripts(tmp_path), tmp_path / "out.jsonl", "search-r1")
    assert stats.as_dict() == {
        "kept": 3,
        "dropped": 2,
        "dropped_by_reason": {"wrong_answer": 1, "no_answer": 1},
    }
    trajs = read_trajectories(tmp_path / "out.jsonl")
    a, b, c = trajs
    assert [t.id for t in trajs] == ["a", "7", "line-5"]
    assert a == b.model_copy(update={"id": "a"})  # the prompt's example tags are skipped
    assert [s.subquery for s in a.steps] == ["Marie Curie birthplace", "Warsaw country"]
    assert a.steps[0].thought == "I need to find where Marie Curie was born."
    assert [d.contents for d in a.steps[0].documents] == [
        "Marie Curie\nMarie Curie was born in Warsaw.",
        "Poland\nPoland is a country.",
    ]
    assert a.final_thought == "Warsaw is in Poland." and a.answer == "Poland"
    assert a.answers == ["Poland"]
    # search-r1 ignores <refine>
    assert c.steps[1].thought == "Now the country."


def test_import_autorefine_merges_refine(tmp_path):
    stats = import_transcripts(_transcripts(tmp_path), tmp_path / "out.jsonl", "autorefine")
    assert stats.kept == 3
    c = read_trajectories(tmp_path / "out.jsonl")[2]
    assert c.steps[0].thought == "Find the birthplace."
    assert c.steps[1].thought == "Marie Curie was born in Warsaw. Now the country."
    assert c.final_thought == "Warsaw is in Poland. Done."
    assert c.answer == "poland."  # EM with SQuAD normalisation matched "Poland"


def test_import_bad_line(tmp_path):
    path = _write(tmp_path / "in.jsonl", [{"question": "q", "answers": ["a"], "transcript": ""},
                                           {"question": "q", "answers": ["a"]}])  # fmt: skip
    with pytest.raises(TrajectoryError, match=r"in.jsonl:2: .*transcript"):
        import_transcripts(path, tmp_path / "out.jsonl")


def test_cli_import(tmp_path, capsys):
    src = _transcripts(tmp_path)
    assert main(["import-trajectories", str(src), str(tmp_path / "o.jsonl")]) == 0
    assert "kept 3, dropped 2 (no_answer: 1, wrong_answer: 1)" in capsys.readouterr().out
    args = ["import-trajectories", "--format", "autorefine", str(src), str(tmp_path / "o.jsonl")]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 3
    _write(src, ["{oops"])
    assert main(args) == 1
    assert "in.jsonl:1: invalid JSON" in capsys.readouterr().err


def test_import_reads_what_the_explicit_agent_renders(tmp_path):
    """Transcripts rendered by baselines.search_r1 import back into the same trajectory."""
    from latentrag_plugins.baselines.search_r1 import render_transcript

    t = Trajectory.model_validate(GOOD)
    steps = [(s.thought, s.subquery, [d.as_retrieved() for d in s.documents]) for s in t.steps]
    text = render_transcript(t.question, steps, t.final_thought, t.answer)
    row = {"id": t.id, "question": t.question, "answers": t.answers, "transcript": text}
    stats = import_transcripts(_write(tmp_path / "in.jsonl", [row]), tmp_path / "out.jsonl")
    assert stats.kept == 1
    back = read_trajectories(tmp_path / "out.jsonl")[0]
    doc = back.steps[0].documents[0]
    assert doc.contents == t.steps[0].documents[0].contents
    fixed = back.model_copy(update={"steps": [s.model_copy() for s in back.steps]})
    fixed.steps[0].documents = t.steps[0].documents
    assert fixed == t

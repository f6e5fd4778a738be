"""The demo models say so when a question is about something their fictional world lacks."""

from __future__ import annotations

import json

from latentrag_plugins.cli.main import main
from latentrag_plugins.demo.assets import DEMO_CORPUS
from latentrag_plugins.demo.out_of_world import out_of_world_note, unread_names
from latentrag_plugins.results import RetrievedDoc


def doc(text: str) -> RetrievedDoc:
    return RetrievedDoc(id="d", text=text, score=1.0)


def test_names_no_document_mentions():
    docs = [doc("Lardave\nLardave is a film directed by Stara Rinsiwyn.")]
    assert unread_names("In which country was Marie Curie born?", docs) == ["Marie", "Curie"]
    assert unread_names("In which city was the director of Lardave born?", docs) == []
    assert unread_names("where was the director of lardave born?", docs) == []  # no capitals
    assert unread_names("what is the boiling point of mercury?", docs) == [
        "boiling",
        "point",
        "mercury",
    ]
    assert out_of_world_note("Who is Marie Curie?", docs).startswith("note: no document")
    assert out_of_world_note("Who directed Lardave?", docs) is None


def test_ask_with_the_demo_model_notes_an_out_of_world_question(tmp_path, capsys):
    docs = DEMO_CORPUS.read_text().splitlines()[:80]
    (tmp_path / "c.jsonl").write_text("\n".join(docs) + "\n")
    idx = str(tmp_path / "idx")
    assert main(["index", str(tmp_path / "c.jsonl"), idx, "--model", "demo"]) == 0
    capsys.readouterr()
    args = ["ask", "--model", "demo", "--index", idx, "--json"]
    assert main([*args, "In which country was Marie Curie born?"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["answer"] and "only their own fictional world" in out.err
    title = json.loads(docs[0])["contents"].split("\n")[0]
    assert main([*args, f"Where was {title} born?"]) == 0
    assert "fictional world" not in capsys.readouterr().err

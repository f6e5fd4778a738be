"""Answer and retrieval metrics against hand-worked examples."""

from __future__ import annotations

import pytest

from latentrag_plugins.metrics import (
    exact_match,
    f1,
    has_answer,
    normalize_answer,
    overlap,
    retrieval_success,
)
from latentrag_plugins.results import RetrievedDoc


@pytest.mark.parametrize(
    ("text", "norm"),
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  an   Apple, a day!  ", "apple day"),
        ("U.S.A.", "usa"),
        ("Theatre of the Absurd", "theatre of absurd"),  # "the" only as a whole word
        ("A", ""),
        ("Rock-'n'-Roll", "rocknroll"),
        ("", ""),
    ],
)
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


def test_exact_match_takes_the_max_over_golds():
    assert exact_match("the Danube", ["Danube River", "Danube"]) == 1.0
    assert exact_match("Danube.", "danube") == 1.0
    assert exact_match("Danube river", ["Danube"]) == 0.0
    assert exact_match(None, ["x"]) == 0.0
    assert exact_match("", [""]) == 1.0
    assert exact_match("x", []) == 0.0


def test_f1_hand_worked():
    # pred {cat, sat} vs gold "cat sat down": common 2, P = 2/2, R = 2/3 -> F1 = 0.8.
    assert f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    # Max over golds: "a cat" -> {cat}: P = 1/2, R = 1 -> 2/3; the other gold gives 0.8.
    assert f1("the cat sat", ["a cat", "cat sat down"]) == pytest.approx(0.8)
    assert f1("the cat sat", ["a cat"]) == pytest.approx(2 / 3)
    # Repeated tokens count with multiplicity: pred {new, new, york}, gold {new, york}.
    assert f1("New New York", "New York") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert f1("Paris", "London") == 0.0
    assert f1("the", "a") == 1.0  # both normalise to empty
    assert f1("Paris", "the") == 0.0
    assert f1(None, "Paris") == 0.0


def test_retrieval_success_and_has_answer():
    docs = [
        RetrievedDoc(id="1", text="Warsaw\nWarsaw is the capital of Poland.", score=1.0),
        RetrievedDoc(id="2", text="Vienna\nVienna lies on the Danube.", score=0.5),
    ]
    assert retrieval_success(docs, ["Poland"]) == 1.0
    assert retrieval_success(docs, ["the Danube River", "Danube"]) == 1.0
    assert retrieval_success(docs, ["Oslo"]) == 0.0
    assert retrieval_success([], ["Poland"]) == 0.0
    assert retrieval_success(["plain text about Poland."], "poland") == 1.0
    # Whole words only: "Pol" is not in "Poland".
    assert not has_answer("Poland is big", ["Pol"])
    assert has_answer("It was in the U.S.A. then", ["USA"])


def test_overlap_is_the_share_of_reference_docs():
    assert overlap(["a", "b", "c"], ["b", "c", "d", "e"]) == pytest.approx(0.5)
    assert overlap(["a"], ["a", "a"]) == 1.0
    assert overlap([], ["a"]) == 0.0
    assert overlap(["a"], []) is None


def test_question_files_are_checked_line_by_line(tmp_path):
    from latentrag_plugins.errors import LatentRAGError
    from latentrag_plugins.evaluation import read_questions

    path = tmp_path / "q.jsonl"
    good = '{"id": "a", "question": "Who?", "golden_answers": ["Ann"]}\n'
    path.write_text(good + '{"id": "b", "question": "Who?", "golden_answers": ["  "]}\n')
    with pytest.raises(LatentRAGError, match=r"q\.jsonl:2: 'golden_answers' has no non-empty"):
        read_questions(path)
    path.write_text(good + '{"id": "c", "question": " ", "golden_answers": ["x"]}\n')
    with pytest.raises(LatentRAGError, match=r"q\.jsonl:2: missing or empty 'question'"):
        read_questions(path)
    path.write_text(good.replace('["Ann"]', '["Ann", "", "The"]'))
    assert read_questions(path)[0].golds == ("Ann",)  # aliases that normalise to "" are dropped
    path.write_text(good + good.replace('["Ann"]', '["A"]').replace('"a"', '"b"'))
    assert len(read_questions(path)) == 1  # a question only "" would match is skipped
    path.write_text(good + good)
    with pytest.raises(LatentRAGError, match=r"q\.jsonl:2: duplicate id 'a'"):
        read_questions(path)
    path.write_text(good.replace("}", ', "supporting_ids": ["d1", 2]}'))
    assert read_questions(path)[0].supporting == ("d1", "2")
    path.write_text(good.replace("}", ', "supporting_ids": "d1"}'))
    with pytest.raises(LatentRAGError, match="'supporting_ids' must be a list"):
        read_questions(path)


def test_support_recall_counts_the_supporting_passages_retrieved():
    from latentrag_plugins.evaluation import Question, evaluate, report
    from latentrag_plugins.metrics import support_recall
    from latentrag_plugins.results import LatentRAGResult, Step

    assert support_recall(["a", "x", "a"], ["a", "b"]) == 0.5
    assert support_recall(["a"], []) is None
    qs = [Question("1", "Q?", ("y",), 2, ("a", "b")), Question("2", "R?", ("y",), 2, ("c",))]

    def run(questions):
        doc = RetrievedDoc(id="a", text="y", score=1.0)
        return [LatentRAGResult(answer="y", steps=[Step(index=0, action="retrieve", docs=[doc])])
                for _ in questions]  # fmt: skip

    rep = report(evaluate({"latent": run}, qs, reference=None, show_progress=False))
    assert rep["methods"]["latent"]["support_recall"] == 0.25  # (1/2 + 0/1) / 2
    assert rep["methods"]["latent"]["retrieval_success"] == 1.0  # any passage with "y"


def test_eval_scores_each_answer_against_its_golds():
    from latentrag_plugins.evaluation import Question, evaluate, report
    from latentrag_plugins.results import LatentRAGResult, Step

    qs = [Question("a", "Where?", ("Poland",), 1), Question("b", "River?", ("Danube",), 2)]
    canned = {
        "Where?": ("Poland", "Warsaw\nWarsaw is in Poland."),
        "River?": ("the Vistula river", "Vienna\nVienna lies on the Danube."),
    }

    def run(questions):
        out = []
        for q in questions:
            answer, text = canned[q]
            doc = RetrievedDoc(id=q, text=text, score=1.0)
            steps = [Step(index=0, action="retrieve", docs=[doc]), Step(index=1, action="answer")]
            out.append(LatentRAGResult(answer=answer, steps=steps))
        return out

    rep = report(evaluate({"latent": run}, qs, reference=None, show_progress=False))
    m = rep["methods"]["latent"]
    assert m["em"] == 0.5 and m["retrieval_success"] == 1.0
    assert m["f1"] == pytest.approx((1.0 + 0.0) / 2)
    assert rep["by_hops"]["2"]["methods"]["latent"]["em"] == 0.0


def test_eval_times_each_call_by_the_wall_clock_after_a_warm_up():
    import time

    from latentrag_plugins.evaluation import Question, evaluate, report
    from latentrag_plugins.results import LatentRAGResult, Step

    qs = [Question(str(i), f"Q{i}?", ("x",), 1) for i in range(12)]
    calls: list[tuple[str, list[str]]] = []

    def runner(name):
        def run(questions):
            calls.append((name, list(questions)))
            time.sleep(0.002)  # work outside every stage the result reports
            doc = RetrievedDoc(id=name, text="x", score=1.0)
            return [LatentRAGResult(answer="x", steps=[Step(index=0, action="retrieve", docs=[doc])])
                    for _ in questions]  # fmt: skip

        return run

    recs = evaluate({"latent": runner("latent"), "explicit": runner("explicit")}, qs,
                    show_progress=False)  # fmt: skip
    assert calls[:2] == [("latent", ["Q0?"]), ("explicit", ["Q0?"])]  # untimed warm-ups
    assert len(calls) == 2 + 2 * len(qs)
    firsts = {calls[2 + 2 * j][0] for j in range(len(qs))}
    assert firsts == {"latent", "explicit"}  # the order varies from batch to batch
    for r in recs["latent"]:
        assert r.latency_ms >= 2.0 and r.stages_ms["other"] >= 2.0
        assert r.retrieval_overlap == 0.0  # its documents are not the explicit agent's
    assert all(r.retrieval_overlap is None for r in recs["explicit"])  # not against itself
    assert report(recs)["methods"]["explicit"]["retrieval_overlap"] is None

"""Latent query embeddings (``embed_query(text, latent=True)``) and the embeddings adapters that
offer them to any vector store."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from latentrag_plugins.engine import latent_loop
from latentrag_plugins.store.corpus import read_corpus
from tests.conftest import EXAMPLES

QUESTIONS = [
    "In which country was Marie Curie born?",
    "Who proposed the theory of general relativity?",
    "Where is the Eiffel Tower?",
    "What did Ada Lovelace write about?",
]


class RecordingStore:
    """A store that records the embeddings it is searched with (only ``search``)."""

    def __init__(self, inner) -> None:
        self.inner, self.seen = inner, []
        self.encoder_id, self.dim = inner.encoder_id, inner.dim

    def __len__(self) -> int:
        return len(self.inner)

    def search(self, embedding, k):
        self.seen.append(np.array(embedding, dtype=np.float32))
        return self.inner.search(embedding, k)


# ------------------------------------------------------------------------------ the embedding
def test_latent_embedding_is_the_loops_first_search(model, store, force):
    latent = model.embed_queries(QUESTIONS, latent=True)  # (4, dim)
    with force(model, "retrieve"):
        gen = latent_loop(model, QUESTIONS, max_steps=2, generate_answer=False)
        first = next(gen)
        gen.close()
        recording = RecordingStore(store)
        model.run(QUESTIONS[0], recording, max_steps=1)
    assert first.step == 0 and first.rows == [0, 1, 2, 3]
    np.testing.assert_allclose(first.embeddings, latent, atol=1e-5)
    np.testing.assert_allclose(recording.seen[0], latent[0], atol=1e-5)


def test_latent_embedding_shape_norm_and_space(model, store):
    e = model.embed_query(QUESTIONS[0], latent=True)
    assert e.shape == (model.dim,) and e.dtype == np.float32
    assert abs(float(np.linalg.norm(e)) - 1.0) < 1e-5
    frozen = model.embed_query(QUESTIONS[0])
    assert not np.allclose(e, frozen, atol=1e-3)  # a different query vector, the same space
    docs = store.search(e, 3)
    assert len(docs) == 3 and all(d.text for d in docs)


def test_default_stays_the_frozen_tower(model):
    want = model.doc_tower.embed_texts(QUESTIONS, is_query=True)
    np.testing.assert_allclose(model.embed_queries(QUESTIONS), want, atol=1e-6)
    np.testing.assert_allclose(model.embed_query(QUESTIONS[1]), want[1], atol=1e-6)
    np.testing.assert_allclose(model.embed_queries(QUESTIONS, latent=False), want, atol=1e-6)


def test_batched_equals_one_by_one(model):
    questions = [*QUESTIONS, "Who?", "Which " + "very " * 30 + "long question is this?"]
    batched = model.embed_queries(questions, latent=True, batch_size=4)  # ragged batches
    one_by_one = np.stack([model.embed_query(q, latent=True) for q in questions])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert model.embed_queries([], latent=True).shape == (0, model.dim)


def test_comes_from_the_llms_hidden_states(model):
    """Perturbing the LLM's last layer changes the latent embedding, not the frozen one; the
    pass runs in eval mode and inference mode."""
    seen = []

    def perturb(module, args, out):
        seen.append((module.training, torch.is_inference_mode_enabled()))
        h = out[0] if isinstance(out, tuple) else out
        h = h + 0.5 * torch.randn(h.shape, generator=torch.Generator().manual_seed(0))
        return (h, *out[1:]) if isinstance(out, tuple) else h

    before = model.embed_query(QUESTIONS[0], latent=True)
    frozen = model.embed_query(QUESTIONS[0])
    handle = model.llm.get_decoder().layers[-1].register_forward_hook(perturb)
    try:
        after = model.embed_query(QUESTIONS[0], latent=True)
        frozen_after = model.embed_query(QUESTIONS[0])
    finally:
        handle.remove()
    assert seen and seen[0] == (False, True)
    assert float(before @ after) < 0.999
    np.testing.assert_allclose(frozen_after, frozen, atol=1e-6)


def test_train_mode_model_is_embedded_in_eval_mode(model):
    want = model.embed_query(QUESTIONS[2], latent=True)
    modes = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: modes.append(mod.training))
        for m in (model.llm.get_decoder().layers[0], model.proj_ret)
    ]
    model.train()
    try:
        got = model.embed_query(QUESTIONS[2], latent=True)
        assert model.training and model.llm.training  # restored
    finally:
        model.eval()
        for h in hooks:
            h.remove()
    assert modes == [False, False]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_threads_get_what_they_would_alone(model):
    want = model.embed_queries(QUESTIONS, latent=True)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: model.embed_query(q, latent=True), QUESTIONS * 2))
    np.testing.assert_allclose(np.stack(got), np.concatenate([want, want]), atol=1e-5)


@pytest.mark.parametrize("bad", ["", "   \n"])
def test_empty_latent_query_is_refused(model, bad):
    with pytest.raises(ValueError, match="empty"):
        model.embed_query(bad, latent=True)
    with pytest.raises(ValueError, match="empty"):
        model.embed_queries(["fine", bad], latent=True)


def test_bad_types_and_sizes_are_refused(model):
    with pytest.raises(TypeError, match="list of strings"):
        model.embed_queries("one string", latent=True)
    with pytest.raises(TypeError, match="strings"):
        model.embed_query(42, latent=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="strings"):
        model.embed_queries(["fine", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        model.embed_queries(QUESTIONS, latent=True, batch_size=0)
    with pytest.raises(ValueError, match="too long"):
        model.embed_query("why " * (model.config.max_context_tokens + 10), latent=True)


# ------------------------------------------------------------------------------ LangChain
def test_langchain_latent_queries_over_a_document_tower_store(model):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from latentrag_plugins.langchain import LatentRAGEmbeddings

    corpus = read_corpus(EXAMPLES / "corpus.jsonl")
    docs = [Document(id=d.id, page_content=d.text) for d in corpus]
    plain = LatentRAGEmbeddings(model=model)
    store = InMemoryVectorStore.from_documents(docs, plain)  # built with the document tower
    latent = LatentRAGEmbeddings(model=model, latent_queries=True)
    assert latent.embed_documents([corpus[0].text]) == plain.embed_documents([corpus[0].text])
    q = QUESTIONS[0]
    vector = latent.embed_query(q)
    np.testing.assert_allclose(vector, model.embed_query(q, latent=True), atol=1e-6)
    assert asyncio.run(latent.aembed_query(q)) == pytest.approx(vector, abs=1e-6)
    np.testing.assert_allclose(
        latent.embed_queries(QUESTIONS), model.embed_queries(QUESTIONS, latent=True), atol=1e-5
    )

    store.embedding = latent  # the same store, now searched with latent queries
    found = store.similarity_search(q, k=3)
    want = store.similarity_search_by_vector(vector, k=3)
    assert len(found) == 3 and [d.id for d in found] == [d.id for d in want]
    assert len(store.max_marginal_relevance_search(q, k=2, fetch_k=5)) == 2
    with pytest.raises(ValueError, match="empty"):
        latent.embed_query(" ")


# ------------------------------------------------------------------------------ LlamaIndex
def test_llama_index_latent_queries_over_a_document_tower_index(model):
    pytest.importorskip("llama_index.core")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import VectorStoreQuery

    from latentrag_plugins.llama_index import LatentRAGEmbedding

    corpus = read_corpus(EXAMPLES / "corpus.jsonl")
    plain = LatentRAGEmbedding(model=model)
    latent = LatentRAGEmbedding(model=model, latent_queries=True)
    assert latent.latent_queries and latent.model_name == plain.model_name
    texts = [d.text for d in corpus[:3]]
    assert latent.get_text_embedding_batch(texts) == plain.get_text_embedding_batch(texts)
    q = QUESTIONS[0]
    vector = latent.get_query_embedding(q)
    np.testing.assert_allclose(vector, model.embed_query(q, latent=True), atol=1e-6)
    assert asyncio.run(latent.aget_query_embedding(q)) == pytest.approx(vector, abs=1e-6)

    nodes = [TextNode(id_=d.id, text=d.text) for d in corpus]
    index = VectorStoreIndex(nodes=nodes, embed_model=plain)  # built with the document tower
    hits = index.as_retriever(similarity_top_k=3, embed_model=latent).retrieve(q)
    direct = index.vector_store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=3))
    assert [h.node.node_id for h in hits] == list(direct.ids)


def test_llama_index_latent_queries_need_the_whole_model(model):
    pytest.importorskip("llama_index.core")
    from latentrag_plugins.llama_index import LatentRAGEmbedding

    with pytest.raises(TypeError, match="latent_queries=True needs a LatentRAG"):
        LatentRAGEmbedding(model=model.doc_tower, latent_queries=True)
    assert LatentRAGEmbedding(model=model.doc_tower).latent_queries is False


# ------------------------------------------------------------------------------ evaluation
EVAL_QUESTIONS = [  # (question, supporting ids, hops) over examples/corpus.jsonl
    ("In which country was Marie Curie born?", ["d0", "d1"], 2),
    ("Who married Marie Curie?", ["d2"], 1),
    ("What is the capital of Poland?", ["d1"], 1),
]


def eval_questions():
    from latentrag_plugins.evaluation import Question

    return [
        Question(f"q{i}", q, ("x",), hops, tuple(sup))
        for i, (q, sup, hops) in enumerate(EVAL_QUESTIONS)
    ]


def test_recall_at_k_and_reciprocal_rank():
    from latentrag_plugins.metrics import recall_at_k, reciprocal_rank

    assert recall_at_k(["a", "b", "c"], ["c", "z"], k=3) == 0.5
    assert recall_at_k(["a", "b", "c"], ["c", "z"], k=2) == 0.0
    assert recall_at_k(["a", "b", "c"], ["a", "c"]) == 1.0
    assert recall_at_k(["a"], []) is None
    assert reciprocal_rank(["a", "b", "c"], ["c", "b"]) == 0.5
    assert reciprocal_rank(["a", "a", "b"], ["b"]) == 0.5  # a repeat keeps its first rank
    assert reciprocal_rank(["a"], ["z"]) == 0.0
    assert reciprocal_rank(["a"], []) is None
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(["a"], ["a"], k=0)


def test_evaluate_retrieval_scores_each_methods_own_documents(model, store, force):
    from latentrag_plugins.engine import drive
    from latentrag_plugins.evaluation import evaluate_retrieval, retrieval_report
    from latentrag_plugins.metrics import recall_at_k, reciprocal_rank

    questions = eval_questions()
    texts = [q.question for q in questions]
    with force(model, "hidden"):
        records = evaluate_retrieval(model, store, questions, max_steps=2, show_progress=False)
        loop = drive(
            latent_loop(model, texts, max_steps=2, min_steps=1, generate_answer=False), store
        )
    k = model.config.top_k
    want = {
        "frozen": [[d.id for d in store.search(e, k)] for e in model.embed_queries(texts)],
        "latent_query": [
            [d.id for d in store.search(e, k)] for e in model.embed_queries(texts, latent=True)
        ],
        "latent": [list(dict.fromkeys(d.id for s in r.steps for d in s.docs)) for r in loop],
    }
    assert list(records) == ["frozen", "latent_query", "latent"]
    for name, ids in want.items():
        assert [list(dict.fromkeys(r.doc_ids)) for r in records[name]] == ids, name
    rep = retrieval_report(records, k=k, model="tiny")
    assert rep["k"] == k and rep["n"] == 3 and rep["model"] == "tiny"
    for name, ids in want.items():
        m = rep["methods"][name]
        sup = [q.supporting for q in questions]
        assert m["recall_at_k"] == pytest.approx(
            np.mean([recall_at_k(i, s) for i, s in zip(ids, sup)])
        )
        assert m["mrr"] == pytest.approx(np.mean([reciprocal_rank(i, s) for i, s in zip(ids, sup)]))
        assert m["mean_ms"] > 0 and set(m["stages_ms"]) == {"embed", "search", "other"}
    assert rep["methods"]["frozen"]["docs"] == k
    assert rep["methods"]["latent_query"]["forward_passes"] == 1
    assert set(rep["by_hops"]) == {"1", "2"} and rep["by_hops"]["1"]["n"] == 2
    assert rep["ratios"]["latent_query_vs_frozen"] > 0


def test_evaluate_retrieval_refuses_bad_settings(model, store):
    from latentrag_plugins.evaluation import Question, evaluate_retrieval

    with pytest.raises(ValueError, match="supporting_ids"):
        evaluate_retrieval(model, store, [Question("q", "Who?", ("x",))], show_progress=False)
    for methods in (["frozen", "bogus"], [], ["latent", "latent"]):
        with pytest.raises(ValueError, match="retrieval methods"):
            evaluate_retrieval(model, store, eval_questions(), methods=methods)
    with pytest.raises(ValueError, match="top_k"):
        evaluate_retrieval(model, store, eval_questions(), top_k=0)


@pytest.fixture
def cli_files(model, store, tmp_path):
    import json

    model.save_pretrained(tmp_path / "m")
    store.save(tmp_path / "idx")
    rows = [
        {"id": f"q{i}", "question": q, "golden_answers": ["x"], "hops": h, "supporting_ids": s}
        for i, (q, s, h) in enumerate(EVAL_QUESTIONS)
    ]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [
        "--model",
        str(tmp_path / "m"),
        "--index",
        str(tmp_path / "idx"),
        "--questions",
        str(qfile),
    ]


def test_cli_retrieval_only(cli_files, tmp_path, capsys):
    import inspect
    import json

    from latentrag_plugins.cli.main import build_parser, main
    from latentrag_plugins.evaluation import evaluate_retrieval

    out = tmp_path / "r.json"
    argv = ["eval", "--retrieval-only", *cli_files, "--max-steps", "2"]
    assert main([*argv, "--json", str(out), "--predictions", str(tmp_path / "p.jsonl")]) == 0
    assert "| latent_query |" in capsys.readouterr().out
    rep = json.loads(out.read_text())  # keys sorted
    assert set(rep["methods"]) == {"frozen", "latent_query", "latent"}
    assert rep["k"] == rep["settings"]["top_k"] == 3 and rep["settings"]["max_steps"] == 2
    assert set(rep["by_hops"]) == {"1", "2"} and "torch_threads" in rep["machine"]
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(preds) == 9 and {"doc_ids", "recall_at_k", "reciprocal_rank"} <= set(preds[0])

    assert main([*argv, "--methods", "frozen", "--top-k", "2", "--json"]) == 0
    captured = capsys.readouterr()
    stdout_rep = json.loads(captured.out)
    assert list(stdout_rep["methods"]) == ["frozen"] and stdout_rep["k"] == 2
    assert "| frozen |" in captured.err

    args = build_parser().parse_args(["eval", "--retrieval-only", *cli_files])
    api = inspect.signature(evaluate_retrieval).parameters
    for name in ("top_k", "max_steps", "batch_size"):
        assert getattr(args, name) == api[name].default, name
    assert args.methods is None  # None: the API's default methods


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--baselines", "naive"], "--baselines does not apply with --retrieval-only"),
        (["--decode"], "--decode does not apply"),
        (["--methods", "frozen,nope"], "bad retrieval methods"),
        (["--methods", " , "], "--methods is empty"),
    ],
)
def test_cli_retrieval_only_mistakes(cli_files, capsys, extra, message):
    from latentrag_plugins.cli.main import main

    assert main(["eval", "--retrieval-only", *cli_files, *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_methods_need_retrieval_only(cli_files, capsys):
    from latentrag_plugins.cli.main import main

    assert main(["eval", *cli_files, "--methods", "frozen"]) == 1
    assert "--methods applies only with --retrieval-only" in capsys.readouterr().err


def test_cli_help_documents_retrieval_only(capsys):
    from latentrag_plugins.cli.main import main

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for word in ("--retrieval-only", "recall@k", "MRR", "frozen", "latent_query", "--methods"):
        assert word in text

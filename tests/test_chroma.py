"""The LangChain adapter over Chroma (``langchain-chroma``, an in-process ephemeral client): scores,
async search, filters and the dimension check."""

from __future__ import annotations

import asyncio
import uuid

import pytest

pytest.importorskip("langchain_core")
chromadb = pytest.importorskip("chromadb")
Chroma = pytest.importorskip("langchain_chroma").Chroma

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402

from latentrag_plugins.errors import EncoderMismatchError  # noqa: E402
from latentrag_plugins.langchain import (  # noqa: E402
    LatentRAGChain,
    LatentRAGEmbeddings,
    LatentRAGRetriever,
)
from latentrag_plugins.store.corpus import read_corpus  # noqa: E402
from tests.conftest import EXAMPLES, ForceActions  # noqa: E402

Q = "In which country was Marie Curie born?"


def chroma(embeddings, docs=(), space: str | None = None):
    """A Chroma store in this process (nothing is written to disk), with its own collection."""
    client = chromadb.EphemeralClient(settings=chromadb.Settings(anonymized_telemetry=False))
    config = {"hnsw": {"space": space}} if space else None
    store = Chroma(
        collection_name=f"t-{uuid.uuid4().hex}",
        embedding_function=embeddings,
        client=client,
        collection_configuration=config,
    )
    if docs:
        store.add_documents(list(docs))
    return store


@pytest.fixture(scope="module")
def docs():
    return [
        Document(id=d.id, page_content=d.text, metadata={"source": f"corpus/{d.id}"})
        for d in read_corpus(EXAMPLES / "corpus.jsonl")
    ]


@pytest.fixture(scope="module")
def emb(model):
    return LatentRAGEmbeddings(model=model)


@pytest.fixture(scope="module")
def store(emb, docs):
    return chroma(emb, docs)


@pytest.fixture
def retrieving(model):
    with ForceActions(model, "retrieve"):
        yield


def check_distances(steps: list[dict]) -> None:
    """Each retrieval step's scores are Chroma's squared L2 distances between unit vectors: in
    [0, 4], ascending with rank (lower is better)."""
    retrieved = [s for s in steps if s["action"] == "retrieve"]
    assert retrieved
    for s in retrieved:
        assert len(s["scores"]) == len(s["document_ids"]) > 0
        assert all(isinstance(x, float) and 0.0 <= x <= 4.0 for x in s["scores"])
        assert s["scores"] == sorted(s["scores"])


def test_retriever_returns_chroma_scores(model, store, retrieving):
    found = LatentRAGRetriever(model=model, vectorstore=store, k=6, top_k=3, max_steps=2).invoke(Q)
    assert 3 <= len(found) <= 6  # two steps of 3, de-duplicated
    assert all(isinstance(d.metadata["latentrag_score"], float) for d in found)
    assert all(d.id and d.metadata["source"] == f"corpus/{d.id}" for d in found)


def test_chain_steps_carry_distances_sync_and_async(model, store, retrieving):
    chain = LatentRAGChain(model=model, vectorstore=store, top_k=3, max_steps=2)
    check_distances(chain.invoke(Q)["steps"])
    check_distances(asyncio.run(chain.ainvoke(Q))["steps"])  # Chroma has no async search


def test_filters_reach_chroma(model, store, retrieving):
    retriever = LatentRAGRetriever(
        model=model,
        vectorstore=store,
        max_steps=2,
        search_kwargs={"filter": {"source": "corpus/d1"}},
    )
    assert [d.id for d in retriever.invoke(Q)] == ["d1"]


def test_cosine_collection_scores_are_cosine_distances(model, emb, docs, retrieving):
    steps = LatentRAGChain(model=model, vectorstore=chroma(emb, docs, "cosine"), max_steps=1)
    for s in steps.invoke(Q)["steps"]:
        assert all(0.0 <= x <= 2.0 for x in s["scores"])  # 1 - cos
        assert s["scores"] == sorted(s["scores"])


class SameNameOtherDim(DeterministicFakeEmbedding):
    """Declares the tower's encoder id, but makes 8-dim vectors."""

    model_name: str = "sentence-transformers/all-MiniLM-L6-v2"


def test_a_dimension_mismatch_is_caught_before_any_search(model, docs):
    wrong = chroma(SameNameOtherDim(size=8), docs[:3])
    with pytest.raises(EncoderMismatchError, match="8-dim.*384-dim"):
        LatentRAGRetriever(model=model, vectorstore=wrong)


def test_an_empty_chroma_store_is_checked_at_its_first_call(model, docs):
    empty = chroma(SameNameOtherDim(size=8))
    retriever = LatentRAGRetriever(model=model, vectorstore=empty)  # nothing to read yet
    empty.add_documents(docs[:3])
    with pytest.raises(EncoderMismatchError, match="8-dim"):
        retriever.invoke(Q)

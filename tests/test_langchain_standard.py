"""LangChain standard test suites (``langchain-tests``) for the LatentRAG retriever and embeddings.

The retriever suite runs over three stores: ``InMemoryVectorStore``, the community FAISS store
and Qdrant in local mode. The model is a tiny random LatentRAG with the real MiniLM retriever,
built once for this module.
"""

from __future__ import annotations

from typing import Any

import pytest

for _module in ("langchain_tests", "langchain_community", "langchain_qdrant", "faiss"):
    pytest.importorskip(_module)

from langchain_core.documents import Document  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402
from langchain_tests.integration_tests import (  # noqa: E402
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
)
from langchain_tests.unit_tests import EmbeddingsUnitTests  # noqa: E402

from latentrag_plugins.langchain import LatentRAGEmbeddings, LatentRAGRetriever  # noqa: E402
from latentrag_plugins.store.corpus import read_corpus  # noqa: E402
from tests.conftest import EXAMPLES, make_model  # noqa: E402

# The standard suites have un-marked async tests: run them with anyio, on asyncio only.
pytestmark = pytest.mark.anyio

_STATE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
def _model_and_stores(tokenizer):
    """One tiny model and the example corpus in each store, for every suite in this module."""
    import torch
    from langchain_community.vectorstores import FAISS
    from langchain_qdrant import QdrantVectorStore

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: thread start-up and contention cost more than it saves
    model = make_model(tokenizer, "tiny")
    emb = LatentRAGEmbeddings(model=model)
    docs = [
        Document(id=d.id, page_content=d.text, metadata={"source": d.id})
        for d in read_corpus(EXAMPLES / "corpus.jsonl")
    ]
    no_ids = [Document(page_content=d.page_content, metadata=d.metadata) for d in docs]
    _STATE.update(
        model=model,
        in_memory=InMemoryVectorStore.from_documents(docs, emb),
        faiss=FAISS.from_documents(docs, emb),
        qdrant=QdrantVectorStore.from_documents(
            no_ids, emb, location=":memory:", collection_name="standard"
        ),
    )
    yield
    _STATE.clear()
    torch.set_num_threads(threads)


class _RetrieverSuite(RetrieversIntegrationTests):
    store_name = "in_memory"

    @property
    def retriever_constructor(self) -> type[LatentRAGRetriever]:
        return LatentRAGRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"model": _STATE["model"], "vectorstore": _STATE[self.store_name], "max_steps": 2}

    @property
    def retriever_query_example(self) -> str:
        return "In which country was Marie Curie born?"


class TestRetrieverInMemory(_RetrieverSuite):
    store_name = "in_memory"


class TestRetrieverFaiss(_RetrieverSuite):
    store_name = "faiss"


class TestRetrieverQdrant(_RetrieverSuite):
    store_name = "qdrant"


class TestEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[LatentRAGEmbeddings]:
        return LatentRAGEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": _STATE["model"]}


class TestEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[LatentRAGEmbeddings]:
        return LatentRAGEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": _STATE["model"]}


class TestLatentQueryEmbeddingsUnit(EmbeddingsUnitTests):
    """The same suites with queries embedded by one latent step."""

    @property
    def embeddings_class(self) -> type[LatentRAGEmbeddings]:
        return LatentRAGEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": _STATE["model"], "latent_queries": True}


class TestLatentQueryEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[LatentRAGEmbeddings]:
        return LatentRAGEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": _STATE["model"], "latent_queries": True}

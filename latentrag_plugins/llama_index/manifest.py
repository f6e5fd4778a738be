"""Which encoder made an index's vectors: the compatibility check, and a manifest for persisted
indexes (LlamaIndex does not persist the embed model).

A persisted index directory gets ``latentrag_manifest.json`` next to LlamaIndex's own files::

    {"dim": 384, "encoder_fingerprint": "e6ec4a27420aa07c",
     "encoder_id": "sentence-transformers/all-MiniLM-L6-v2", "format": ...,
     "vector_store": "llama_index.vector_stores.faiss.base.FaissVectorStore", ...}
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import llama_index.core
from llama_index.core import StorageContext, load_index_from_storage
from llama_index.core.indices.vector_store.base import VectorStoreIndex

from .._version import __version__
from ..encoder_identity import loaded_from, same_encoder, weights_fingerprint
from ..errors import EncoderMismatchError, StoreError
from ..io_utils import write_json_atomic
from .embedding import LatentRAGEmbedding, document_tower

log = logging.getLogger(__name__)

MANIFEST_FILE = "latentrag_manifest.json"
FORMAT = "latentrag-llama-index"
FORMAT_VERSION = 1
_UNNAMED = {"", "unknown"}
_HINT = "Build the index with `embed_model=LatentRAGEmbedding(model=...)`."


def store_dim(vector_store: Any) -> int | None:
    """The dimension of a vector store's vectors, when the store can tell without a query.

    Knows FAISS-backed stores (``client.d``), ``SimpleVectorStore`` (its first vector) and stores
    with a ``dim`` / ``embed_dim`` / ``dimension`` attribute; None otherwise.
    """
    try:
        d = getattr(getattr(vector_store, "client", None), "d", None)
    except Exception:  # some clients connect lazily; a probe must never fail
        d = None
    if isinstance(d, int) and d > 0:
        return d
    vectors = getattr(getattr(vector_store, "data", None), "embedding_dict", None)
    if isinstance(vectors, dict) and vectors:
        return len(next(iter(vectors.values())))
    for attr in ("dim", "embed_dim", "dimension", "embedding_dimension"):
        v = getattr(vector_store, attr, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def check_index(index: Any, model: Any) -> None:
    """Raise unless ``index``'s vectors come from ``model``'s document tower.

    The index's embed model (``index._embed_model``) must be a :class:`LatentRAGEmbedding` or
    name the same encoder as ``model_name``: the same id, or the same weights (e.g. the folder
    the tower was loaded from; :func:`~latentrag_plugins.encoder_identity.same_encoder`). The
    dimension is read from the vector store.

    Args:
        index: A ``VectorStoreIndex``.
        model: Anything with ``encoder_id`` and ``dim`` (a LatentRAG, its document tower).

    Raises:
        EncoderMismatchError: naming both encoders or both dimensions, or an embed model that
            names no encoder (such as ``MockEmbedding``, or ``embed_model=None``), whose vectors
            could come from anything.
    """
    want_id, want_dim = model.encoder_id, int(model.dim)
    embed = getattr(index, "_embed_model", None)
    name = getattr(embed, "model_name", None)
    if embed is not None:
        if not isinstance(name, str) or name in _UNNAMED:
            raise EncoderMismatchError(
                f"the index embeds with {type(embed).__name__}, which names no model "
                f"(model_name={name!r}), so nothing says its vectors come from the LatentRAG "
                f"model's document tower {want_id!r} ({want_dim}-dim). {_HINT} (An embed model "
                f"of that very encoder may instead say so: model_name={want_id!r}.)"
            )
        if not same_encoder(name, want_id, b_dir=loaded_from(model)):
            raise EncoderMismatchError(
                f"the index embeds with {type(embed).__name__}(model_name={name!r}), but the "
                f"LatentRAG model's document tower is {want_id!r} ({want_dim}-dim). {_HINT}"
            )
    vector_store = getattr(index, "vector_store", None)
    dim, source = store_dim(vector_store), type(vector_store).__name__
    if dim is None and isinstance(embed, LatentRAGEmbedding):
        dim, source = embed.dim, f"{type(embed).__name__}({name!r})"
    if dim is not None and dim != want_dim:
        raise EncoderMismatchError(
            f"the index holds {dim}-dim vectors ({source}), but the LatentRAG model's document "
            f"tower {want_id!r} makes {want_dim}-dim vectors. {_HINT}"
        )


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def read_manifest(persist_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a persisted index, or None when it has none."""
    path = Path(persist_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable LatentRAG manifest: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StoreError(f"{path}: not a LatentRAG LlamaIndex manifest")
    return data


def persist_index(index: VectorStoreIndex, persist_dir: str | os.PathLike[str], model: Any) -> None:
    """Persist ``index`` (``storage_context.persist``) and write the manifest next to it.

    Args:
        index: A ``VectorStoreIndex`` built with the model's document tower.
        persist_dir: Target directory.
        model: The LatentRAG model, a checkpoint path, or its document tower.

    Raises:
        EncoderMismatchError: The index was not built with the model's document tower.
    """
    tower = document_tower(model)
    check_index(index, tower)
    index.storage_context.persist(persist_dir=str(persist_dir))
    write_json_atomic(
        Path(persist_dir) / MANIFEST_FILE,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "encoder_id": tower.encoder_id,
            "encoder_fingerprint": _fingerprint(tower),
            "dim": int(tower.dim),
            "vector_store": _class_path(index.vector_store),
            "latentrag_plugins_version": __version__,
            "llama_index_core_version": llama_index.core.__version__,
        },
    )


def _fingerprint(tower: Any) -> str | None:
    """The weights fingerprint of the folder a tower was loaded from, when it has one."""
    source = loaded_from(tower)
    return weights_fingerprint(source) if source else None


def _manifest_encoder_matches(manifest: dict[str, Any], tower: Any) -> bool:
    """Whether a manifest's encoder is ``tower``'s: the ids name the same encoder
    (:func:`~latentrag_plugins.encoder_identity.same_encoder`), and the weights fingerprints, where
    both are known, agree (they differ when a folder's weights were replaced since)."""
    saved, now = manifest.get("encoder_fingerprint"), _fingerprint(tower)
    if isinstance(saved, str) and now is not None and saved != now:
        return False
    return same_encoder(str(manifest.get("encoder_id")), tower.encoder_id, b_dir=loaded_from(tower))


def _vector_store_for(persist_dir: Path, manifest: dict[str, Any]) -> Any:
    """Reload a non-default vector store persisted in ``persist_dir`` (LlamaIndex integrations)."""
    path = str(manifest.get("vector_store", ""))
    module, _, name = path.rpartition(".")
    if not module or module.startswith("llama_index.core.vector_stores.simple"):
        return None
    if not module.startswith("llama_index.vector_stores."):
        raise StoreError(f"{persist_dir}: vector store {path!r} cannot be reloaded here; pass it")
    cls = getattr(importlib.import_module(module), name, None)
    if cls is None or not hasattr(cls, "from_persist_dir"):
        raise StoreError(
            f"{persist_dir}: {path} does not reload from a directory; pass vector_store=..."
        )
    return cls.from_persist_dir(str(persist_dir))


def load_index(
    persist_dir: str | os.PathLike[str],
    model: Any,
    *,
    vector_store: Any = None,
    **kwargs: Any,
) -> VectorStoreIndex:
    """Load an index saved by :func:`persist_index`, checking it against ``model``.

    The embed model is set to the model's document tower. A FAISS (or other
    ``llama_index.vector_stores.*``) store persisted in the directory is reloaded from the class
    the manifest names; pass ``vector_store`` for stores that live elsewhere. A directory without a
    manifest (an index persisted by plain LlamaIndex) loads with a warning, its dimension probed.

    Args:
        persist_dir: The directory.
        model: The LatentRAG model, a checkpoint path, or its document tower.
        vector_store: The vector store, when it is not persisted in ``persist_dir``.
        **kwargs: Passed to ``load_index_from_storage`` (``index_id``, ...).

    Raises:
        EncoderMismatchError: The manifest (or the store) names another encoder or dimension.
        StoreError: The directory or its manifest is missing or unreadable.
    """
    root = Path(persist_dir)
    if not root.is_dir():
        raise StoreError(f"{root}: index directory not found")
    tower = document_tower(model)
    manifest = read_manifest(root)
    if manifest is None:
        log.warning("%s has no %s; probing the index dimension only", root, MANIFEST_FILE)
    else:
        if not _manifest_encoder_matches(manifest, tower):
            raise EncoderMismatchError(
                f"{root} was built with encoder {manifest.get('encoder_id')!r} (weights "
                f"{manifest.get('encoder_fingerprint')}), but the LatentRAG model's document tower "
                f"is {tower.encoder_id!r} (weights {_fingerprint(tower)}). Rebuild the index. "
                f"{_HINT}"
            )
        if int(manifest.get("dim", -1)) != int(tower.dim):
            raise EncoderMismatchError(
                f"{root} holds {manifest.get('dim')}-dim vectors, but the LatentRAG model's "
                f"document tower {tower.encoder_id!r} makes {tower.dim}-dim vectors. {_HINT}"
            )
        if vector_store is None:
            vector_store = _vector_store_for(root, manifest)
    storage = StorageContext.from_defaults(persist_dir=str(root), vector_store=vector_store)
    index = load_index_from_storage(storage, embed_model=LatentRAGEmbedding(model=tower), **kwargs)
    check_index(index, tower)
    return index


__all__ = [
    "MANIFEST_FILE",
    "check_index",
    "load_index",
    "persist_index",
    "read_manifest",
    "same_encoder",
    "store_dim",
]

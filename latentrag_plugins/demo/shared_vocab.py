"""A base-LM tokenizer that splits text exactly as a BERT-style retriever does.

LatentRAG's query slots must produce the retriever's *input embeddings* of a subquery (``Proj_ret``
feeds the query tower). When the LLM and the retriever split an invented name into the same
pieces, that is a per-token mapping the slots can learn by copying; with two different tokenizers
it is a translation between subword vocabularies, which a small LLM does not learn from a few
thousand examples (docs/demo-model.md). The paper pairs Qwen2.5 with Qwen3-Embedding, which
share a tokenizer, for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ..encoder import resolve_retriever
from ..prompts import QUESTION_PROMPT, SUBQUERY_DECODE_PROMPT, THOUGHT_DECODE_PROMPT

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOS, PAD, UNK = "<|endoftext|>", "<|pad|>", "[UNK]"


def _retriever_vocab(retriever: str) -> list[str]:
    path = Path(resolve_retriever(retriever)) / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a shared vocabulary needs a local WordPiece retriever (vocab.txt)"
        )
    return path.read_text(encoding="utf-8").splitlines()


def _wordpiece(vocab: dict[str, int]) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return tok


def retriever_tokenizer(texts: Iterable[str], retriever: str = "minilm") -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer over the retriever's pieces that ``texts`` and the model's prompts
    use, plus every ASCII character piece (so no ASCII word is unknown), ``<|endoftext|>`` (EOS)
    and ``<|pad|>``.

    On ``texts`` it splits exactly as the retriever does; elsewhere a piece missing from the
    subset makes the split finer, never different in characters. Lower-cases, as the retriever.
    """
    full = _retriever_vocab(retriever)
    full_tok = _wordpiece({w: i for i, w in enumerate(full)})
    prompts = [QUESTION_PROMPT, THOUGHT_DECODE_PROMPT, SUBQUERY_DECODE_PROMPT]
    used: set[str] = set()
    for enc in full_tok.encode_batch([*prompts, *texts]):
        used.update(enc.tokens)
    chars = {w for w in full if w.isascii() and (len(w) == 1 or (len(w) == 3 and w[:2] == "##"))}
    pieces = sorted((used | chars) - {UNK})
    vocab = {w: i for i, w in enumerate([EOS, PAD, UNK, *pieces])}
    return PreTrainedTokenizerFast(
        tokenizer_object=_wordpiece(vocab),
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=32768,
    )


def init_embeddings_from_retriever(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, retriever: str = "minilm"
) -> int:
    """Set the LLM's input embedding of every shared piece to the retriever's word embedding,
    reduced to the LLM's width by PCA and scaled to the LLM's initialisation scale.

    Returns:
        How many rows were set.
    """
    from safetensors.torch import load_file

    path = Path(resolve_retriever(retriever))
    index = {w: i for i, w in enumerate(_retriever_vocab(retriever))}
    weights = load_file(str(path / "model.safetensors"))
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    table = weights[key].float()  # (V_ret, d_ret)
    rows = [(i, index[w]) for w, i in tokenizer.get_vocab().items() if w in index and w != UNK]
    ours = torch.tensor([r[0] for r in rows])
    theirs = table[torch.tensor([r[1] for r in rows])]  # (N, d_ret)
    emb = model.get_input_embeddings().weight  # (V, d)
    d = emb.shape[1]
    centered = theirs - theirs.mean(0)
    _, _, v = torch.linalg.svd(centered, full_matrices=False)  # v: (d_ret, d_ret)
    reduced = centered @ v[: min(d, v.shape[0])].T  # (N, <= d)
    with torch.no_grad():
        target = emb.std().item()
        emb[ours, : reduced.shape[1]] = (reduced * (target / reduced.std())).to(emb.dtype)
    return len(rows)

"""A base LM that shares the retriever's tokenization (demo.shared_vocab) and streaming text."""

from __future__ import annotations

import json

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from latentrag_plugins import LatentRAG
from latentrag_plugins.context import TextStream
from latentrag_plugins.demo.base_lm import build_base_lm
from latentrag_plugins.demo.reading import READING_TOKENS, render_reading
from latentrag_plugins.demo.shared_vocab import retriever_tokenizer
from latentrag_plugins.encoder import resolve_retriever
from latentrag_plugins.tokens import load_tokenizer
from tests.conftest import EXAMPLES

TEXTS = [
    json.loads(line)["contents"] for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()
]


def test_splits_exactly_as_the_retriever_and_spells_unseen_words():
    ours = retriever_tokenizer(TEXTS)
    theirs = AutoTokenizer.from_pretrained(resolve_retriever("minilm"))
    for text in TEXTS:
        assert ours.tokenize(text) == theirs.tokenize(text)
    assert len(ours) < 2000  # only the pieces in use, not the retriever's 30k
    unseen = ours.tokenize("Zqxvorth")
    assert unseen and "[UNK]" not in unseen
    assert ours.decode(ours("Zqxvorth was born in Oslo.")["input_ids"]) == (
        "zqxvorth was born in oslo."
    )


def test_shared_vocab_base_lm_starts_from_retriever_embeddings(tmp_path):
    texts = [render_reading("Where was Ann born?", [["Ann\nAnn was born in Oslo."]], "Oslo")] * 4
    out = build_base_lm(
        texts + TEXTS, tmp_path / "base", shape="tiny", seq_len=64, steps=1, batch_size=2, lr=1e-6,
        special_tokens=READING_TOKENS, retriever="minilm",
    )  # fmt: skip
    tok = load_tokenizer(out)
    assert tok.tokenize("Oslo born") == ["oslo", "born"]
    assert tok.convert_tokens_to_ids("<answer>") in tok(texts[0])["input_ids"]
    emb = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight.detach()
    word = AutoModel.from_pretrained(resolve_retriever("minilm")).get_input_embeddings().weight
    ret_tok = AutoTokenizer.from_pretrained(resolve_retriever("minilm"))
    pieces = ["born", "oslo", "film", "city", "the", "was"]
    ours = emb[tok.convert_tokens_to_ids(pieces)]  # (6, d)
    theirs = word[ret_tok.convert_tokens_to_ids(pieces)].detach()  # (6, 384)
    # the retriever's geometry survives the PCA: similarities correlate
    sim_ours = torch.nn.functional.cosine_similarity(ours[:, None], ours[None], dim=-1)
    sim_theirs = torch.nn.functional.cosine_similarity(theirs[:, None], theirs[None], dim=-1)
    off = ~torch.eye(len(pieces), dtype=torch.bool)
    corr = torch.corrcoef(torch.stack([sim_ours[off], sim_theirs[off]]))[0, 1]
    assert corr > 0.5
    model = LatentRAG.init(str(out), device="cpu")
    assert model.tokenizer.tokenize("Oslo") == ["oslo"]  # not the qwen2 type's own pre-tokenizer
    model.save_pretrained(tmp_path / "latent")
    again = LatentRAG.from_pretrained(str(tmp_path / "latent"), device="cpu")
    assert again.tokenizer.tokenize("Oslo born?") == ["oslo", "born", "?"]


def test_explicit_agent_tags_survive_a_wordpiece_tokenizer(tmp_path):
    from latentrag_plugins.baselines import search_r1 as sr1
    from latentrag_plugins.baselines.explicit import ExplicitAgent

    out = build_base_lm(
        TEXTS, tmp_path / "base", shape="tiny", seq_len=64, steps=1, batch_size=2, lr=1e-6,
        retriever="minilm",
    )  # fmt: skip
    agent = ExplicitAgent.init(str(out), device="cpu")
    text = agent.decode(agent.trusted(f"{sr1.THINK} who {sr1.THINK_END} {sr1.SEARCH} Oslo mayor"))
    assert sr1.extract_search(text + f" {sr1.SEARCH_END}") == "oslo mayor"
    assert sr1.extract_think(text) == "who"
    rows = agent.llm.get_input_embeddings().weight
    search = agent.tokenizer.convert_tokens_to_ids(sr1.SEARCH)
    pieces = agent.tokenizer("<search>", split_special_tokens=True)["input_ids"]
    assert torch.allclose(rows[search], rows[pieces].mean(0))  # not random noise
    agent.save_pretrained(tmp_path / "agent")
    again = ExplicitAgent.from_pretrained(str(tmp_path / "agent"), device="cpu")
    assert again.tokenizer.convert_tokens_to_ids(sr1.SEARCH) == search


def test_text_stream_pieces_join_into_the_full_decode():
    tok = retriever_tokenizer(TEXTS)
    ids = tok("The film was directed by Nan Gronerini in 1899.")["input_ids"]
    pieces: list[str] = []
    stream = TextStream(tok, lambda row, text: pieces.append(text))
    for t in ids:
        stream(0, t)
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert " " in "".join(pieces)  # token-by-token decoding would lose the spaces


def test_text_stream_flush_sends_a_held_back_tail():
    class Bytes:
        """Decodes like a byte-level tokenizer cut inside a multi-byte character."""

        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return "".join({1: "caf", 2: "\ufffd"}[i] for i in ids)

    pieces: list[str] = []
    stream = TextStream(Bytes(), lambda row, text: pieces.append(text))
    stream(0, 1)
    stream(0, 2)
    assert pieces == ["caf"]  # waits for the rest of the character
    stream.flush()
    assert "".join(pieces) == "caf\ufffd"

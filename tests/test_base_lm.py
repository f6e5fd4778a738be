"""The demo base LM: built and pretrained from scratch, then usable as a LatentRAG base model."""

from __future__ import annotations

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from latentrag_plugins import LatentRAG
from latentrag_plugins.demo.base_lm import build_base_lm
from tests.conftest import EXAMPLES


def test_pretrain_then_init_latentrag(tmp_path):
    texts = [
        json.loads(line)["contents"]
        for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()
    ]
    out = build_base_lm(
        texts * 4,
        tmp_path / "base",
        shape="tiny",
        vocab_size=600,
        seq_len=64,
        steps=30,
        batch_size=4,
        lr=3e-3,
    )
    log = [json.loads(x) for x in (out / "pretrain_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    llm = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert llm.config.vocab_size == len(tok)
    model = LatentRAG.init(str(out), device="cpu")
    assert model.config.base_model == str(out)
    assert model.tokenizer.convert_tokens_to_ids("<query_1>") >= len(tok)


def test_pack_keeps_texts_whole():
    from latentrag_plugins.demo.base_lm import pack
    from latentrag_plugins.model_zoo import build_tokenizer

    texts = [f"text number {i} " + "word " * (i % 7) for i in range(40)]
    tok = build_tokenizer(texts, vocab_size=300)
    inputs, labels = pack(tok, texts, seq_len=32)
    assert inputs.shape == labels.shape and inputs.shape[1] == 32
    eos = tok.eos_token_id
    rebuilt = []
    for row, lab in zip(inputs.tolist(), labels.tolist()):
        used = [t for t, y in zip(row, lab) if y != -100]
        assert used == row[: len(used)] and used[-1] == eos  # a row ends at a text's end
        rebuilt += used
    want = [i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"] + [eos]]
    assert rebuilt == want


def test_reading_texts_keep_the_evidence():
    from latentrag_plugins.demo.reading import reading_texts
    from latentrag_plugins.world import build_dataset

    ds = build_dataset(seed=1, size="small")
    sup = {q.record["id"]: q.record["supporting_ids"] for q in ds.questions["train"]}
    texts = reading_texts(ds.trajectories, sup, max_docs=3)
    assert len(texts) == len(ds.trajectories)
    contents = {d["id"]: d["contents"] for d in ds.corpus.docs}
    for tr, text in zip(ds.trajectories, texts):
        assert text.startswith("Answer the following question") and tr["question"] in text
        assert text.endswith(f"<answer> {tr['answer']}</answer>")
        assert text.count("(Title:") <= max(3, len(sup[tr["id"]]))
        for doc_id in sup[tr["id"]]:
            assert contents[doc_id].split("\n", 1)[1][:40] in text


def test_reading_tokens_keep_their_pretrained_rows(tmp_path):
    import torch

    from latentrag_plugins.demo.reading import READING_TOKENS, render_reading

    texts = [render_reading("Where was Ann born?", [["Ann\nAnn was born in Oslo."]], "Oslo")] * 8
    out = build_base_lm(
        texts, tmp_path / "base", shape="tiny", vocab_size=300, seq_len=64, steps=2,
        batch_size=2, special_tokens=READING_TOKENS,
    )  # fmt: skip
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(texts[0], add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<answer>") in ids  # one token, not "<", "answer", ">"
    base_rows = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight
    model = LatentRAG.init(str(out), device="cpu")
    rows = model.llm.get_input_embeddings().weight
    for t in READING_TOKENS:
        i = model.tokenizer.convert_tokens_to_ids(t)
        assert i < len(tok) and torch.equal(rows[i], base_rows[i])


def test_continue_pretraining_replaces_weights_and_keeps_history(tmp_path):
    import torch

    from latentrag_plugins.demo.base_lm import continue_pretraining

    texts = ["Ann was born in Oslo. Bo was born in Rome."] * 16
    out = build_base_lm(texts, tmp_path / "b", shape="tiny", vocab_size=300, seq_len=32, steps=2)
    before = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight.clone()
    n_logs = len((out / "pretrain_log.jsonl").read_text().splitlines())
    continue_pretraining(out, texts, seq_len=32, steps=3, batch_size=2)
    after = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight
    assert not torch.equal(before, after)
    info = json.loads((out / "pretrain.json").read_text())
    assert info["steps"] == 2 and info["continued"][0]["steps"] == 3
    assert len((out / "pretrain_log.jsonl").read_text().splitlines()) > n_logs
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left

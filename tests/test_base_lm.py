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

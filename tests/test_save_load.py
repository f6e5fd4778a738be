"""Save -> load round trips of the model and its modules; clear errors for bad checkpoints."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from latentrag_plugins import LatentRAG
from latentrag_plugins.config import LatentRAGConfig
from latentrag_plugins.errors import CheckpointError
from latentrag_plugins.projector import Projector

Q = "Which river flows through the birthplace of Albert Einstein?"


@pytest.fixture(scope="module")
def trained(model):
    """A copy of the session's model whose query tower differs from the frozen document tower,
    as after training (the session's model stays as it is for other tests)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.query_tower.encoder.encoder.layer[-1].output.dense.bias.add_(0.05)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory, trained):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    trained.save_pretrained(path)
    return path


def test_round_trip_gives_identical_results(saved, trained, store, force):
    model = trained
    # (path, device=None); float32 as saved (the default on a CPU with native bfloat16 is mixed)
    loaded = LatentRAG.from_pretrained(saved, "cpu", dtype=torch.float32)
    with force(model, "retrieve"):
        a = model.run(Q, store, max_steps=2, decode=True)
    with force(loaded, "retrieve"):
        b = loaded.run(Q, store, True, max_steps=2)  # DESIGN §4: (question, store, decode=False)
    assert a.answer == b.answer
    assert [s.model_dump(exclude={"logit_lens"}) for s in a.steps] == [
        s.model_dump(exclude={"logit_lens"}) for s in b.steps
    ]
    for la, lb in zip(a._latents, b._latents):
        assert la.keys() == lb.keys()
        for k in la:
            torch.testing.assert_close(la[k], lb[k])
    for name in ("proj_ret", "proj_think", "proj_query", "query_tower"):
        sa, sb = getattr(model, name).state_dict(), getattr(loaded, name).state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k])
    assert loaded.tokenizer.convert_tokens_to_ids("<query_16>") == model.ids.query[-1]
    assert loaded.config == model.config


def test_checkpoint_layout_is_safetensors_only(saved):
    files = [p for p in saved.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["library_version"]
    assert list(cfg) == sorted(cfg)
    assert (
        saved / "query_tower.safetensors"
    ).stat().st_size < 2_000_000  # only the changed tensors


@pytest.mark.parametrize(
    "victim",
    [
        "config.json",
        "proj_ret/model.safetensors",
        "proj_think/config.json",
        "query_tower.safetensors",
        "llm",
    ],
)
def test_missing_file_is_named(saved, tmp_path, victim):
    copy = tmp_path / "ckpt"
    shutil.copytree(saved, copy)
    target = copy / victim
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CheckpointError, match=victim.split("/")[0]):
        LatentRAG.from_pretrained(copy, device="cpu")


@pytest.mark.parametrize(
    "victim", ["config.json", "proj_query/model.safetensors", "query_tower.safetensors"]
)
def test_corrupt_file_is_named(saved, tmp_path, victim):
    copy = tmp_path / "ckpt"
    shutil.copytree(saved, copy)
    (copy / victim).write_bytes(b"\x00garbage{")
    with pytest.raises(CheckpointError, match=victim.split("/")[-1].split(".")[0]):
        LatentRAG.from_pretrained(copy, device="cpu")


def test_projector_round_trip(tmp_path):
    proj = Projector(64, 32, n_heads=4)
    x = torch.randn(2, 5, 64)
    proj.save(tmp_path / "p")
    again = Projector.load(tmp_path / "p")
    proj.eval(), again.eval()
    torch.testing.assert_close(proj(x), again(x))
    assert proj(x).shape == (2, 5, 32)


def test_projector_is_bidirectional():
    proj = Projector(64, 64).eval()
    x = torch.randn(1, 4, 64)
    y = x.clone()
    y[0, -1] += torch.randn(64)  # change only the last token
    assert not torch.allclose(proj(x)[0, 0], proj(y)[0, 0])  # the first token sees it


def test_config_validation_and_unknown_keys(tmp_path):
    with pytest.raises(ValueError):
        LatentRAGConfig(base_model="x", n_think=0)
    with pytest.raises(ValueError):
        LatentRAGConfig(base_model="  ")
    for bad in ({"topk": 7}, {"projector_heads": 0}, {"retriever_dim": -3}):  # typos, nonsense
        with pytest.raises(ValueError, match=next(iter(bad))):
            LatentRAGConfig(base_model="x", **bad)
    # init checks its settings before loading anything (no such model: a load would fail)
    with pytest.raises(ValueError, match="topk"):
        LatentRAG.init(str(tmp_path / "no-such-model"), topk=7)
    from latentrag_plugins.baselines.explicit import ExplicitAgent

    with pytest.raises(ValueError, match="max_turn"):
        ExplicitAgent.init(str(tmp_path / "no-such-model"), max_turn=2)
    path = tmp_path / "config.json"
    LatentRAGConfig(base_model="x").save(path)
    data = json.loads(path.read_text())
    data["from_the_future"] = 1
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="from_the_future"):
        cfg = LatentRAGConfig.load(path)
    assert cfg.base_model == "x"


def test_retriever_pooling_is_recorded(model):
    assert model.config.retriever_pooling == "mean"
    assert model.config.retriever == "sentence-transformers/all-MiniLM-L6-v2"
    assert model.config.retriever_dim == 384
    assert model.config.trust_remote_code is False


def test_last_token_pooling_for_decoder_embedders(tokenizer):
    import copy

    from latentrag_plugins.model_zoo import build_encoder, build_llm

    tok = copy.deepcopy(tokenizer)
    enc = build_encoder("tiny-qwen3-emb", vocab_size=len(tok))
    m = LatentRAG.init(
        build_llm("tiny", vocab_size=len(tok)), (enc, copy.deepcopy(tokenizer)),
        tokenizer=tok, retriever_id="Qwen/Qwen3-Embedding-0.6B-shaped", device="cpu",
    )  # fmt: skip
    assert m.config.retriever_pooling == "last_token"
    e = m.embed_documents(["a short one", "a much longer document about many things"])
    assert e.shape == (2, 64)
    assert abs(float((e**2).sum(1)[0]) - 1) < 1e-4


def test_loading_in_bf16_on_cpu_moves_the_towers_too(saved, store, force):
    m = LatentRAG.from_pretrained(saved, device="cpu", dtype=torch.bfloat16)
    for part in (m.llm, m.proj_ret, m.doc_tower, m.query_tower):
        assert next(part.parameters()).dtype == torch.bfloat16
    with force(m, "retrieve"):
        res = m.run(Q, store, max_steps=1)
    assert res.steps[0].docs  # the bf16 query embedding searches the float32 index
    half = LatentRAG.from_pretrained(saved, device="cpu", dtype=torch.float16)
    assert next(half.doc_tower.parameters()).dtype == torch.float32  # no fast fp16 on CPU


def test_a_checkpoint_cannot_turn_on_remote_code_itself(saved, tmp_path, monkeypatch, caplog):
    """DESIGN §5: custom model code runs only when the caller asks, whatever the config says."""
    import latentrag_plugins.checkpoint_files as files_mod
    import latentrag_plugins.encoder as encoder_mod
    import latentrag_plugins.model_files as model_mod

    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "trust_remote_code": True}))
    seen: list[bool] = []
    real_tok, real_enc = model_mod.load_tokenizer, encoder_mod.load_encoder

    def tok(path, trust=False):
        seen.append(trust)
        return real_tok(path, trust)

    def enc(name, *, trust_remote_code=False):
        seen.append(trust_remote_code)
        return real_enc(name, trust_remote_code=trust_remote_code)

    monkeypatch.setattr(model_mod, "load_tokenizer", tok)
    monkeypatch.setattr(model_mod, "load_encoder", enc)
    monkeypatch.setattr(files_mod, "load_encoder", enc)
    with caplog.at_level("WARNING"):
        LatentRAG.from_pretrained(ckpt, device="cpu")
        files_mod.load_document_tower(ckpt, device="cpu")
    assert seen and not any(seen)
    assert "--trust-remote-code" in caplog.text
    seen.clear()
    LatentRAG.from_pretrained(ckpt, device="cpu", trust_remote_code=True)
    assert seen and all(seen)


def test_saving_never_wipes_a_directory_that_is_not_a_checkpoint(model, tmp_path):
    from latentrag_plugins.errors import LatentRAGError

    home = tmp_path / "models"
    home.mkdir()
    (home / "thesis.txt").write_text("years of work")
    with pytest.raises(LatentRAGError, match="thesis.txt, which a save would delete"):
        model.save_pretrained(home)
    with pytest.raises(LatentRAGError, match="refusing"):
        model.proj_ret.save(home)
    assert (home / "thesis.txt").read_text() == "years of work"
    model.save_pretrained(tmp_path / "ckpt")
    model.save_pretrained(tmp_path / "ckpt")  # replacing a checkpoint is fine
    assert (tmp_path / "ckpt" / "config.json").is_file()
    (tmp_path / "ckpt" / "checkpoints").mkdir()  # a training run: checkpoint plus its history
    with pytest.raises(LatentRAGError, match="checkpoints, which a save would delete"):
        model.save_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize("padding", [0, 64])
def test_control_rows_start_from_descriptive_words_even_in_a_padded_vocabulary(padding):
    """LLMs often pad their embedding matrix past the vocabulary (Qwen2.5: 152,064 rows for
    151,665 tokens); the control tokens then take padding rows, which must be initialised too."""
    from latentrag_plugins.model_zoo import build_llm, build_tokenizer
    from latentrag_plugins.tokens import _INIT_WORDS, add_control_tokens

    tok = build_tokenizer()
    llm = build_llm("tiny", vocab_size=len(tok) + padding, seed=3)
    before = llm.get_input_embeddings().weight.detach().clone()
    old_len = len(tok)
    add_control_tokens(tok, llm, 2, 3)
    emb = llm.get_input_embeddings().weight.detach()
    assert emb.shape[0] == max(len(tok), old_len + padding)
    answer = tok.convert_tokens_to_ids("<answer>")
    words = tok(_INIT_WORDS["<answer>"], add_special_tokens=False)["input_ids"]
    mean = emb[words].mean(0)
    assert answer >= old_len
    if padding:  # the row existed (a padding row): it was re-initialised
        assert not torch.equal(emb[answer], before[answer])
    assert torch.cosine_similarity(emb[answer], mean, dim=0) > 0.95


def test_a_relative_retriever_path_is_bundled(tmp_path, monkeypatch):
    """A checkpoint must load from any working directory: a retriever given as a relative path
    is saved inside it; the default MiniLM, absolute paths and hub ids are not."""
    from latentrag_plugins.checkpoint_files import retriever_loadable
    from latentrag_plugins.config import DEFAULT_RETRIEVER

    (tmp_path / "enc").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not retriever_loadable("enc") and retriever_loadable(str(tmp_path / "enc"))
    assert retriever_loadable(DEFAULT_RETRIEVER) and retriever_loadable("BAAI/bge-small-en-v1.5")


def test_last_token_texts_end_with_the_token_the_latent_path_pools_at(tokenizer):
    """Qwen3-Embedding's tokenizer appends <|endoftext|>, which is not its eos_token: text rows
    must end with that same framing token (as latent inputs do), once, within max_length."""
    import copy

    from latentrag_plugins.encoder import EncoderTower
    from latentrag_plugins.model_zoo import build_encoder

    tok = copy.deepcopy(tokenizer)
    enc = build_encoder("tiny-qwen3-emb", vocab_size=len(tok))
    tower = EncoderTower(enc, tok, pooling="last_token", max_length=8)
    end = 7  # an ordinary token standing in for <|endoftext|>
    assert tok.eos_token_id != end
    tower._suffix_ids = [end]
    texts = ["a", "a much longer text about many things, cut at max_length", "b"]
    got = tower.tokenize(texts)
    for ids, mask in zip(got["input_ids"].tolist(), got["attention_mask"].tolist()):
        real = [i for i, keep in zip(ids, mask) if keep]
        assert real[-1] == end and len(real) <= 8  # pooled at the framing token, not at EOS
    again = tower._end_with_suffix(got["input_ids"], got["attention_mask"])
    assert torch.equal(again["input_ids"], got["input_ids"])  # rows that end with it stay as is


def test_context_budget_never_exceeds_the_llms_positions(tokenizer, saved, tmp_path):
    import copy

    from latentrag_plugins.model_zoo import build_llm

    tok = copy.deepcopy(tokenizer)
    short = build_llm("tiny", vocab_size=len(tok), seed=1, max_position_embeddings=512)
    model = LatentRAG.init(short, tokenizer=tok, device="cpu")  # default budget: lowered
    assert model.config.max_context_tokens == 512
    with pytest.raises(ValueError, match="exceeds the LLM's 512 positions"):
        LatentRAG.init(short, tokenizer=copy.deepcopy(tokenizer), max_context_tokens=600)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved, ckpt)
    llm_cfg = json.loads((ckpt / "llm" / "config.json").read_text())
    (ckpt / "llm" / "config.json").write_text(
        json.dumps({**llm_cfg, "max_position_embeddings": 1000})
    )
    with pytest.warns(UserWarning, match="config.json: max_context_tokens=3000 exceeds.*1000"):
        loaded = LatentRAG.from_pretrained(ckpt, device="cpu")  # saved before budgets were checked
    assert loaded.config.max_context_tokens == 1000
    tiny = build_llm("tiny", vocab_size=len(tok), seed=1, max_position_embeddings=64)
    with pytest.raises(ValueError, match="only 64 positions, too few"):
        LatentRAG.init(tiny, tokenizer=copy.deepcopy(tokenizer))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("n_think", 5, "<think_5>"), ("retriever_dim", 999, "retriever_dim=999")],
)
def test_a_config_that_does_not_fit_its_checkpoint_is_named(saved, tmp_path, field, value, message):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(CheckpointError, match=f"config.json.*{message}"):
        LatentRAG.from_pretrained(ckpt, device="cpu")


def test_an_in_memory_retriever_is_bundled_and_round_trips(tokenizer, tmp_path):
    import numpy as np

    from latentrag_plugins.model_zoo import build_encoder, build_llm

    tok = copy.deepcopy(tokenizer)
    enc = build_encoder("tiny-qwen3-emb", vocab_size=len(tok))
    m = LatentRAG.init(
        build_llm("tiny", vocab_size=len(tok)), (enc, copy.deepcopy(tokenizer)), tokenizer=tok,
        device="cpu",
    )  # fmt: skip
    m.save_pretrained(tmp_path / "c")
    again = LatentRAG.from_pretrained(tmp_path / "c", device="cpu", dtype=torch.float32)
    texts = ["Warsaw is in Poland.", "a b c"]
    np.testing.assert_allclose(again.embed_documents(texts), m.embed_documents(texts), atol=1e-5)
    assert again.encoder_id == m.encoder_id

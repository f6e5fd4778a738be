"""Training: losses against hand computations, label masking, teacher forcing == inference
layout, preparation, end-to-end training on a generated world, resume, ablations and the CLI."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from latentrag_plugins.cli.main import main
from latentrag_plugins.errors import CheckpointError
from tests.conftest import ForceActions, make_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train faster on one thread (and much faster on a busy machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def world():
    """12 oracle trajectories from the fictional world and the documents they read."""
    from latentrag_plugins.training.trajectories import Trajectory
    from latentrag_plugins.world import build_dataset

    ds = build_dataset(seed=0, size="small")
    trajs = [Trajectory.model_validate(t) for t in ds.trajectories[:12]]
    docs = {d.id: d.contents for t in trajs for s in t.steps for d in s.documents}
    return trajs, docs


@pytest.fixture(scope="module")
def wstore(tokenizer, world):
    """A FAISS store over the trajectories' documents (MiniLM document tower)."""
    from latentrag_plugins.store.corpus import CorpusDoc
    from latentrag_plugins.store.faiss_store import FaissStore

    model = make_model(tokenizer, "tiny")
    docs = [CorpusDoc(id=k, text=v) for k, v in world[1].items()]
    return FaissStore.build(model.doc_tower, docs, show_progress=False), model.doc_tower


@pytest.fixture(scope="module")
def prepared(world, wstore):
    from latentrag_plugins.training import prepare

    store, tower = wstore
    return prepare(tower, store, world[0], calibrate=True, show_progress=False)


# ------------------------------------------------------------------------------------ losses
def test_kl_loss_hand_computed():
    from latentrag_plugins.training.losses import kl_retrieval_loss

    ref = [[0.9, 0.5, 0.1, 0.0], [0.2, 0.2, 0.6, 0.4]]
    lat = [[0.1, 0.8, 0.3, 0.2], [0.2, 0.2, 0.6, 0.4]]
    beta = 0.5

    def softmax(xs):
        e = [math.exp(x / beta) for x in xs]
        return [v / sum(e) for v in e]

    p, q = softmax(ref[0]), softmax(lat[0])
    row0 = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    want = (row0 + 0.0) / 2  # the second row matches exactly
    got = kl_retrieval_loss(torch.tensor(ref), torch.tensor(lat, requires_grad=True), beta)
    assert got.item() == pytest.approx(want, rel=1e-5)
    got.backward()  # differentiable in the latent scores only
    assert kl_retrieval_loss(torch.zeros(0, 4), torch.zeros(0, 4), beta).item() == 0.0


def test_cosine_and_infonce_losses_hand_computed():
    from latentrag_plugins.training.losses import cosine_retrieval_loss, infonce_retrieval_loss

    lat = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    ref = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert cosine_retrieval_loss(lat, ref).item() == pytest.approx(0.5)
    scores = torch.tensor([[0.5, 0.1, -0.2], [0.3, 0.3, 0.0]])
    pos = torch.tensor([[True, False, False], [True, True, False]])
    r0 = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(0.1) + math.exp(-0.2)))
    r1 = -math.log(2 * math.exp(0.3) / (2 * math.exp(0.3) + 1.0))
    got = infonce_retrieval_loss(scores, pos, beta=1.0)
    assert got.item() == pytest.approx((r0 + r1) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="positive"):
        infonce_retrieval_loss(scores, torch.zeros(2, 3, dtype=torch.bool), 1.0)


def test_first_step_loss_hand_computed():
    """L_first: KL from the mean of a trajectory's subquery distributions to its first latent
    query's distribution."""
    from latentrag_plugins.training.losses import first_step_retrieval_loss

    beta = 0.5

    def softmax(xs):
        e = [math.exp(x / beta) for x in xs]
        return [v / sum(e) for v in e]

    ref = [[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.3, 0.3, 0.3]]  # trajectory 0: rows 0, 1
    first = [[0.5, 0.2, 0.1], [0.3, 0.3, 0.3]]
    p0 = [(a + b) / 2 for a, b in zip(softmax(ref[0]), softmax(ref[1]))]
    q0 = softmax(first[0])
    want = sum(pi * math.log(pi / qi) for pi, qi in zip(p0, q0)) / 2  # trajectory 1 matches
    got = first_step_retrieval_loss(
        torch.tensor(ref), torch.tensor(first, requires_grad=True), torch.tensor([0, 0, 1]), beta
    )
    assert got.item() == pytest.approx(want, rel=1e-5)
    got.backward()
    empty = first_step_retrieval_loss(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0), beta)
    assert empty.item() == 0.0


def test_generation_loss_full_and_restricted():
    from latentrag_plugins.training.losses import generation_loss

    logits = torch.tensor([[1.0, 2.0, 0.0, 0.5], [0.0, 0.0, 3.0, 1.0], [2.0, 0.0, 1.0, 0.0]])
    labels = torch.tensor([1, 2, 0])
    is_action = torch.tensor([True, False, True])

    def ce(row, t):
        return -math.log(math.exp(row[t]) / sum(math.exp(v) for v in row))

    full = sum(ce(logits[i].tolist(), int(labels[i])) for i in range(3)) / 3
    assert generation_loss(logits, labels).item() == pytest.approx(full, rel=1e-6)
    # restricted: action rows are a 2-way choice between ids (1, 0) = (query_1, answer)
    want = (ce([2.0, 1.0], 0) + ce(logits[1].tolist(), 2) + ce([0.0, 2.0], 1)) / 3
    got = generation_loss(logits, labels, is_action=is_action, action_ids=(1, 0))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_calibrate_beta():
    from latentrag_plugins.training.calibrate import calibrate_beta, top_mass

    scores = torch.rand(10, 16, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    beta = calibrate_beta(scores, target=0.5)
    assert top_mass(scores, beta) == pytest.approx(0.5, abs=1e-6)
    assert top_mass(scores, beta / 2) > 0.5 > top_mass(scores, beta * 2)
    with pytest.raises(ValueError, match="more than 3"):
        calibrate_beta(scores[:, :3])


# ------------------------------------------------------------------------------ sequences
def _traj():
    from latentrag_plugins.training.trajectories import Trajectory

    doc = {
        "id": "d0",
        "contents": "Marie Curie\nShe was born in Warsaw <answer> <query_3> in 1867.",
    }
    return Trajectory.model_validate({
        "id": "q", "question": "Where was Marie Curie born?", "answers": ["Warsaw"],
        "steps": [
            {"thought": "I need her birthplace.", "subquery": "Marie Curie birthplace",
             "documents": [doc, {"id": "d1", "contents": "Warsaw\nCapital of Poland."}]},
            {"thought": "Check the city.", "subquery": "Warsaw city",
             "documents": [{"id": "d1", "contents": "Warsaw\nCapital of Poland."}]},
        ],
        "final_thought": "She was born in Warsaw.", "answer": "Warsaw",
    })  # fmt: skip


def test_sequence_matches_inference_and_masks_labels(tokenizer):
    from latentrag_plugins.inference import latent_loop
    from latentrag_plugins.training.sequences import build_example

    model = make_model(tokenizer, "tiny", max_doc_tokens=16, max_steps=2)
    ids, (m, n) = model.ids, (model.config.n_think, model.config.n_query)
    traj = _traj()
    ex = build_example(model, traj)
    # The inference loop, forced to retrieve twice and fed the trajectory's documents, sees
    # exactly the teacher-forced sequence up to <answer>.
    gen = latent_loop(model, [traj.question], max_steps=2)
    with ForceActions(model, "retrieve"):
        req = next(gen)
        try:
            while True:
                docs = [d.as_retrieved() for d in traj.steps[req.step].documents]
                req = gen.send([docs])
        except StopIteration as stop:
            seen = stop.value[0]._token_ids
    cut = ex.input_ids.index(ids.answer) + 1
    assert seen[:cut] == ex.input_ids[:cut]
    # "<answer> <query_3>" in a document stayed text: only the slots are control tokens
    assert ex.input_ids.count(ids.answer) == 1 and ex.input_ids.count(ids.query[2]) == 2
    # Labels: only the action at each <think_m> and the answer tokens + </answer>.
    labels = ex.labels()
    labelled = [i for i, v in enumerate(labels) if v != -100]
    assert labelled == sorted(ex.action_pos + ex.answer_pos)
    assert [labels[p] for p in ex.action_pos] == [ids.query[0], ids.query[0], ids.answer]
    assert [ex.input_ids[p] for p in ex.action_pos] == [ids.think[-1]] * 3
    answer = model.prompts.untrusted(" Warsaw")
    assert [labels[p] for p in ex.answer_pos] == [*answer, ids.answer_end]
    assert ex.input_ids[-len(answer) - 2 :] == [ids.answer, *answer, ids.answer_end]
    # The answer step has no query slots: <think_m> is followed by <answer>.
    assert ex.input_ids[ex.action_pos[-1] + 1] == ids.answer
    assert [len(g) for g in ex.think_pos] == [m] * 3 and [len(g) for g in ex.query_pos] == [n] * 2
    assert all(ex.input_ids[p] == ids.query[j] for g in ex.query_pos for j, p in enumerate(g))
    assert [g for g, _ in ex.thought_targets] == [0, 1, 2]
    assert ex.subquery_targets[1][1][-1] == ids.eos


def test_sequence_skips(tokenizer):
    from latentrag_plugins.training.sequences import SequenceSkipped, build_example

    model = make_model(tokenizer, "tiny", max_steps=1)
    with pytest.raises(SequenceSkipped) as exc:
        build_example(model, _traj())
    assert exc.value.reason == "too many steps"
    model.config.max_steps = 4
    with pytest.raises(SequenceSkipped, match="too long"):
        build_example(model, _traj(), max_length=50)


def test_decoding_loss_trains_what_decode_items_reads(tokenizer):
    """L_dec's sequences have decode_items' layout: after fitting, decoding gives the text."""
    from latentrag_plugins.decoding import decode_items
    from latentrag_plugins.training.forward import llm_parts
    from latentrag_plugins.training.losses import latent_decoding_loss
    from latentrag_plugins.training.sequences import decode_target

    model = make_model(tokenizer, "tiny")
    gen = torch.Generator().manual_seed(0)
    lat_t, lat_q = torch.randn(2, 4, 64, generator=gen), torch.randn(1, 16, 64, generator=gen)
    texts, sub = ["find the birthplace of marie curie", "she was born in warsaw"], "curie birth"

    def pad(rows):
        w = max(map(len, rows))
        return torch.tensor([r + [-100] * (w - len(r)) for r in rows])

    tt, tq = pad([decode_target(model, t) for t in texts]), pad([decode_target(model, sub)])
    params = [
        *model.llm.parameters(),
        *model.proj_think.parameters(),
        *model.proj_query.parameters(),
    ]
    opt = torch.optim.AdamW(params, lr=3e-3)
    emb, dec, head = llm_parts(model.llm)
    model.train()
    for _ in range(60):
        loss = latent_decoding_loss(
            emb, dec, head, model.proj_think, model.prompts.decode_prompt("thought"), lat_t, tt,
            model.ids.pad,
        ) + latent_decoding_loss(
            emb, dec, head, model.proj_query, model.prompts.decode_prompt("subquery"), lat_q, tq,
            model.ids.pad,
        )  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out, _ = decode_items(
        model, [("thought", lat_t[0]), ("thought", lat_t[1]), ("subquery", lat_q[0])]
    )
    assert out == [*texts, sub]


# ------------------------------------------------------------------------------ preparation
def test_prepare_save_load(tmp_path, world, wstore, prepared):
    from latentrag_plugins.training.batching import collate
    from latentrag_plugins.training.prepared import PreparedData, PreparedDataError

    trajs, _ = world
    store, tower = wstore
    data = prepared
    s = sum(len(t.steps) for t in trajs)
    assert data.query_emb.shape == (s, 384) and data.top_n == 16
    assert data.query_offsets.tolist()[-1] == s
    assert data.meta["calibrated"] and data.meta["top3_mass"] == pytest.approx(0.5, abs=1e-4)
    sub = trajs[0].steps[0].subquery
    assert torch.allclose(data.query_emb[0], torch.from_numpy(tower.embed_texts([sub], is_query=True)[0]), atol=1e-5)  # fmt: skip
    top = store.search(data.query_emb[0].numpy(), 16)
    assert [data.doc_ids[r] for r in data.topn_rows[0].tolist()] == [d.id for d in top]
    assert torch.allclose(data.topn_scores[0], torch.tensor([d.score for d in top]), atol=1e-4)
    row = data.topn_rows[0, 0]
    emb = torch.from_numpy(tower.embed_texts([store.texts[store.ids.index(data.doc_ids[row])]]))
    assert torch.allclose(data.doc_emb[row], emb[0], atol=1e-5)

    class PlainStore:  # any store with search(): documents are re-embedded by the tower
        encoder_id, dim = store.encoder_id, store.dim

        def __len__(self):
            return len(store)

        def search(self, emb, k):
            return store.search(emb, k)

    from latentrag_plugins.training import prepare

    plain = prepare(tower, PlainStore(), trajs[:2], calibrate=True, show_progress=False)
    ids = [data.doc_ids.index(i) for i in plain.doc_ids]
    assert torch.allclose(plain.doc_emb, data.doc_emb[ids], atol=1e-5)

    data.save(tmp_path / "p")
    back = PreparedData.load(tmp_path / "p", encoder_id=tower.encoder_id)
    assert back.trajectories == data.trajectories and back.beta == data.beta
    assert torch.equal(back.topn_rows, data.topn_rows) and back.doc_ids == data.doc_ids
    with pytest.raises(PreparedDataError, match="prepared with encoder"):
        PreparedData.load(tmp_path / "p", encoder_id="other/encoder")
    (tmp_path / "p" / "retrieval.safetensors").write_bytes(b"junk")
    with pytest.raises(PreparedDataError, match="retrieval.safetensors"):
        PreparedData.load(tmp_path / "p")

    class _Ex:  # the collate inputs that matter here
        def __init__(self, rows):
            self.input_ids, self.query_rows, self.label_pos, self.action_pos = [1, 2], rows, [], []
            self.think_pos, self.query_pos = [[0]], [[0]] * len(rows)
            self.thought_targets, self.subquery_targets = [], []

        length = 2

    batch = collate([_Ex([0, 1]), _Ex([2])], data, pad_id=0)
    union = set(data.topn_rows[:3].flatten().tolist())
    assert batch["cand_emb"].shape[0] == len(union)  # in-batch candidates, deduplicated
    assert batch["ref_scores"].shape == (3, len(union))
    best = batch["ref_scores"].argmax(1)
    assert batch["positives"][torch.arange(3), best].all()
    # A batch whose first trajectory answers without retrieving (allowed by the schema).
    batch = collate([_Ex([]), _Ex([0, 1])], data, pad_id=0)
    assert batch["query_index"].shape == (2, 1) and batch["ref_scores"].shape[0] == 2


def test_binned_batches():
    from latentrag_plugins.training.batching import BinnedBatches

    lengths = [5, 100, 7, 98, 6, 99, 50, 51, 52, 8]
    plan = BinnedBatches(lengths, batch_size=3, n_bins=200, seed=1)
    assert plan.n_bins == 4  # capped so that every bin holds a batch
    ep = plan.epoch(0)
    assert sorted(i for b in ep for i in b) == list(range(10))
    bins = [set(b) for b in plan.bins]
    assert all(any(set(b) <= bn for bn in bins) for b in ep)  # each batch from one bin
    assert plan.epoch(0) == ep and plan.epoch(1) != ep and len(plan) == len(ep)
    # Bins hold whole batches: only one batch of an epoch may be short.
    for n, bs, bins in [(10_000, 16, 200), (28_000, 32, 200), (17, 16, 200), (50, 8, 3)]:
        plan = BinnedBatches(list(range(n)), batch_size=bs, n_bins=bins, seed=0)
        sizes = sorted(len(b) for b in plan.epoch(0))
        assert sum(sizes) == n and sizes[1:] == [bs] * (len(sizes) - 1) and len(plan) == len(sizes)


def test_train_config():
    from pydantic import ValidationError

    from latentrag_plugins.training.config import TrainConfig

    cfg = TrainConfig()
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lr, cfg.epochs, cfg.batch_size) == (16, 64, 1e-4, 5, 16)
    assert (cfg.weight_decay, cfg.max_length, cfg.n_bins, cfg.lambda_ret) == (0.01, 3000, 200, 1)
    with pytest.raises(ValidationError):
        TrainConfig(lr=0)
    with pytest.raises(ValidationError):
        TrainConfig(ret_loss="l2")
    with pytest.warns(UserWarning, match="unknown keys"):
        assert TrainConfig.from_dict({"lr": 0.5, "bogus": 1}).lr == 0.5
    with pytest.raises(ValidationError, match="DeepSpeed config"):
        TrainConfig(deepspeed="zero1", gradient_accumulation_steps=2)


def test_deepspeed_config_shipped(tmp_path):
    from latentrag_plugins.training import TrainConfig, Trainer
    from latentrag_plugins.training.trainer import zero1_config_path

    ds = json.loads(zero1_config_path().read_text())
    assert ds["zero_optimization"]["stage"] == 1
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install deepspeed"):
            Trainer("m", "d", tmp_path, TrainConfig(deepspeed="zero1")).train()


def test_training_is_apart_from_inference():
    code = (
        "import sys, latentrag_plugins, latentrag_plugins.model, latentrag_plugins.inference, "
        "latentrag_plugins.decoding\n"
        "assert not [m for m in sys.modules if m.startswith('latentrag_plugins.training')]\n"
        "assert 'peft' not in sys.modules\n"
        "before = set(sys.modules)\n"  # transformers itself may import parts of accelerate
        "import latentrag_plugins.training\n"
        "new = set(sys.modules) - before\n"
        "assert not [m for m in new if m.split('.')[0] in ('peft', 'accelerate')], new\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ training
def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_end_to_end_training(tmp_path, tokenizer, world, wstore, prepared):
    """All losses fall, and the latent subquery learns to retrieve what the text subquery does."""
    from latentrag_plugins import LatentRAG
    from latentrag_plugins.training import TrainConfig, Trainer
    from latentrag_plugins.training.batching import collate
    from latentrag_plugins.training.evaluate import retrieval_overlap
    from latentrag_plugins.training.forward import LatentLossModule, latent_embeddings
    from latentrag_plugins.training.latent_task import build_examples

    store, _ = wstore
    model = make_model(tokenizer, "tiny", max_doc_tokens=24)
    examples, skipped = build_examples(model, prepared, 3000)
    assert len(examples) == 12 and not skipped
    before = retrieval_overlap(model, prepared, examples, store)
    cfg = TrainConfig(
        full_finetune=True, max_steps=40, batch_size=12, lr=2e-4, lr_scheduler="constant",
        llm_dropout=0.0, log_every=1, save_every=0,
    )  # fmt: skip
    out = tmp_path / "run"
    summary = Trainer(model, prepared, out, cfg).train(show_progress=False)
    after = retrieval_overlap(model, prepared, examples, store)
    assert before < 0.3 and after > 0.6, (before, after)

    log = _log(out)
    assert [r["step"] for r in log] == list(range(1, 41))
    assert {"step", "loss", "loss_gen", "loss_ret", "loss_dec", "lr", "time"} <= set(log[0])
    for key in ("loss_gen", "loss_ret", "loss_dec", "loss"):
        vals = [r[key] for r in log]
        assert all(math.isfinite(v) for v in vals)
        first, last = sum(vals[:5]) / 5, sum(vals[-5:]) / 5
        assert last < 0.95 * first, (key, first, last)
    assert summary["steps"] == 40 and summary["steps_per_second"] > 0
    assert summary["format"] == "full" and json.loads((out / "summary.json").read_text())
    assert TrainConfig.load(out / "train_config.json") == cfg
    assert not (out / "checkpoints").exists()  # save_every=0: only the final model

    # The run directory is a checkpoint: same latent embeddings, and it answers questions.
    loaded = LatentRAG.from_pretrained(out, device="cpu", dtype=torch.float32)  # as trained
    batch = collate(examples[:3], prepared, model.ids.pad)
    assert torch.allclose(
        latent_embeddings(loaded, batch), latent_embeddings(model, batch), atol=1e-5
    )
    res = loaded.run(prepared.trajectories[0].question, store)
    assert res.steps and isinstance(res.answer, str)
    mod = LatentLossModule(loaded, beta=prepared.beta).eval()
    with torch.no_grad():
        assert math.isfinite(mod(batch)["loss"].item())


def _first_step_coverage(model, data, examples, store, k=3):
    """Share of later subqueries' reference top-1 documents that the first latent query's
    top-``k`` holds, over the trajectories with several searches (teacher-forced)."""
    from latentrag_plugins.training.batching import collate
    from latentrag_plugins.training.forward import latent_embeddings

    model.eval()
    batch = collate(examples, data, model.ids.pad)
    emb = latent_embeddings(model, batch)[batch["first_query"]].float().numpy()  # (F, dim)
    found = [{d.id for d in docs} for docs in store.search_batch(emb, k)]
    owner = batch["query_owner"].tolist()
    rows = [r for e in examples for r in e.query_rows]
    hits = [
        data.doc_ids[data.topn_rows[r, 0]] in found[t]
        for s, (r, t) in enumerate(zip(rows, owner))
        if s != batch["first_query"][t]
    ]
    return sum(hits) / len(hits)


def test_first_step_loss_teaches_the_first_query_the_whole_trajectory(
    tmp_path, tokenizer, prepared, wstore
):
    """With λ_first the first step's latent query finds more of the later subqueries'
    documents than the same training without it; λ_first = 0 leaves the losses as they were."""
    from latentrag_plugins.training import TrainConfig, Trainer
    from latentrag_plugins.training.batching import collate
    from latentrag_plugins.training.forward import LatentLossModule
    from latentrag_plugins.training.latent_task import build_examples

    store, _ = wstore
    coverage, logs = {}, {}
    for lam in (0.0, 8.0):
        model = make_model(tokenizer, "tiny", max_doc_tokens=24)
        examples, _ = build_examples(model, prepared, 3000)
        assert sum(len(e.query_rows) > 1 for e in examples) >= 4
        cfg = TrainConfig(
            full_finetune=True, max_steps=30, batch_size=12, lr=2e-4, lr_scheduler="constant",
            llm_dropout=0.0, log_every=1, save_every=0, lambda_first=lam,
        )  # fmt: skip
        Trainer(model, prepared, tmp_path / str(lam), cfg).train(show_progress=False)
        coverage[lam] = _first_step_coverage(model, prepared, examples, store)
        logs[lam] = _log(tmp_path / str(lam))
    assert coverage[8.0] > coverage[0.0] + 0.2, coverage
    assert all(r["loss_first"] == 0.0 for r in logs[0.0])
    first = [r["loss_first"] for r in logs[8.0]]
    assert sum(first[-5:]) < 0.8 * sum(first[:5]), first

    # Off, the total is the paper's; on, it adds λ_first · L_first.
    batch = collate(examples[:4], prepared, model.ids.pad)
    with torch.no_grad():
        off = LatentLossModule(model, beta=prepared.beta).eval()(batch)
        on = LatentLossModule(model, beta=prepared.beta, lambda_first=2.0).eval()(batch)
    paper = off["loss_gen"] + off["loss_ret"] + off["loss_dec"]
    assert off["loss"].item() == paper.item() and off["loss_first"].item() == 0.0
    assert on["loss_first"].item() > 0
    assert on["loss"].item() == pytest.approx((paper + 2.0 * on["loss_first"]).item(), rel=1e-6)


def _lora_setup(tmp_path, tokenizer, world, wstore):
    """A LoRA-able model whose base LLM lives in a directory, and prepared data on disk."""
    import copy

    from latentrag_plugins import LatentRAG
    from latentrag_plugins.model_zoo import build_llm
    from latentrag_plugins.training import prepare

    tok = copy.deepcopy(tokenizer)
    base = tmp_path / "base"
    # Saved in bfloat16, as hub checkpoints often are; training and its added rows are float32.
    build_llm("tiny", vocab_size=len(tok), seed=1).to(torch.bfloat16).save_pretrained(base)
    tok.save_pretrained(base)
    model = LatentRAG.init(str(base), device="cpu", max_doc_tokens=24)
    model.save_pretrained(tmp_path / "init")
    store, tower = wstore
    prepare(tower, store, world[0][:6], show_progress=False).save(tmp_path / "prep")
    return tmp_path / "init", tmp_path / "prep"


def test_resume_gives_same_next_step_loss_lora(tmp_path, tokenizer, world, wstore):
    from latentrag_plugins import LatentRAG
    from latentrag_plugins.errors import LatentRAGError
    from latentrag_plugins.training import TrainConfig, Trainer
    from latentrag_plugins.training.batching import collate
    from latentrag_plugins.training.forward import LatentLossModule
    from latentrag_plugins.training.latent_task import build_examples

    init, prep = _lora_setup(tmp_path, tokenizer, world, wstore)
    cfg = TrainConfig(max_steps=4, batch_size=2, lr=1e-3, log_every=1, save_every=2)  # LoRA
    a, b = tmp_path / "a", tmp_path / "b"
    trainer = Trainer(str(init), str(prep), a, cfg)
    summary = trainer.train(show_progress=False)
    assert summary["format"] == "adapter" and (a / "llm_adapter").is_dir()
    assert summary["trainable_parameters"]["llm"] > 0
    stopped = Trainer(str(init), str(prep), b, cfg).train(show_progress=False, stop_after=2)
    assert stopped["stopped"] and not (b / "config.json").exists()
    with pytest.raises(LatentRAGError, match="--resume"):
        Trainer(str(init), str(prep), b, cfg).train(show_progress=False)
    Trainer(str(init), str(prep), b, cfg).train(show_progress=False, resume=True)
    la, lb = _log(a), _log(b)
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    for ra, rb in zip(la, lb):  # dropout 0.1 is on: RNG states are restored too
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6)
        assert rb["lr"] == pytest.approx(ra["lr"])  # the scheduler is restored too
    with pytest.raises(LatentRAGError, match="different settings"):
        Trainer(str(init), str(prep), b, cfg.model_copy(update={"lr": 1.0})).train(resume=True)

    # The adapter checkpoint reloads (LoRA merged, control-token rows restored).
    loaded = LatentRAG.from_pretrained(a, device="cpu")
    assert loaded.config.lora == {"r": 16, "alpha": 64.0}
    trained, data = trainer.task.module.model, _prep(prep)
    examples, _ = build_examples(loaded, data, 3000)
    batch = collate(examples[:3], data, loaded.ids.pad)
    with torch.no_grad():
        want = LatentLossModule(trained, beta=0.03).eval()(batch)
        got = LatentLossModule(loaded, beta=0.03).eval()(batch)
    for k in ("loss_gen", "loss_ret", "loss_dec"):
        assert got[k].item() == pytest.approx(want[k].item(), rel=1e-3), k

    # Adapter weights as a pickle (PEFT's .bin fallback) are refused, naming the file.
    c = tmp_path / "c"
    shutil.copytree(a, c)
    weights = c / "llm_adapter" / "adapter_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        LatentRAG.from_pretrained(c, device="cpu")


def _prep(path):
    from latentrag_plugins.training.prepared import PreparedData

    return PreparedData.load(path)


@pytest.mark.parametrize(
    "ret_loss, pretrained, dec, ckpt",
    [("cosine", True, True, True), ("infonce", False, False, False)],
)
def test_ablation_options(tmp_path, tokenizer, prepared, ret_loss, pretrained, dec, ckpt):
    from latentrag_plugins import LatentRAG
    from latentrag_plugins.training import TrainConfig, Trainer

    model = make_model(tokenizer, "tiny", max_doc_tokens=24)
    cfg = TrainConfig(
        full_finetune=True, max_steps=2, batch_size=4, log_every=1, save_every=0,
        ret_loss=ret_loss, pretrained_retriever=pretrained, decoding_loss=dec,
        gradient_checkpointing=ckpt,
    )  # fmt: skip
    Trainer(model, prepared, tmp_path / "r", cfg).train(show_progress=False)
    log = _log(tmp_path / "r")
    assert all(math.isfinite(r["loss_ret"]) and r["loss_ret"] > 0 for r in log)
    assert all((r["loss_dec"] > 0) == dec for r in log)
    loaded = LatentRAG.from_pretrained(tmp_path / "r", device="cpu")
    assert (loaded.query_tower is not None) == pretrained
    assert loaded.config.pretrained_query_tower == pretrained


def test_cli_prepare_train_ask(tmp_path, world, capsys):
    from latentrag_plugins.training.trajectories import write_trajectories

    trajs, docs = world
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": k, "contents": v}) + "\n" for k, v in docs.items()))
    write_trajectories(tmp_path / "traj.jsonl", trajs[:4])
    m, idx, prep, out = (str(tmp_path / x) for x in ("m", "idx", "prep", "out"))
    assert main(["init", "--base-model", "random:tiny", m]) == 0
    assert main(["index", str(corpus), idx, "--model", m]) == 0
    capsys.readouterr()
    args = ["prepare", "--model", m, "--index", idx, str(tmp_path / "traj.jsonl"), prep]
    assert main([*args, "--calibrate-beta", "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["trajectories"] == 4 and man["top_n"] == 16 and man["calibrated"]
    train = ["train", "--model", m, "--data", prep, "--out", out, "--batch-size", "2",
             "--save-every", "1", "--log-every", "1", "--no-progress",
             "--lambda-first", "2"]  # fmt: skip
    assert main([*train, "--max-steps", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["format"] == "full"  # random:tiny base: merged
    assert main([*train, "--max-steps", "3", "--resume"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    assert [r["step"] for r in _log(tmp_path / "out")] == [1, 2, 3]
    assert all(r["loss_first"] > 0 for r in _log(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "train_config.json").read_text())["lambda_first"] == 2
    ckpts = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-3"]  # save_total_limit=2 keeps the newest two
    assert main(train) == 1
    assert "already holds a training run" in capsys.readouterr().err
    q = trajs[0].question
    assert main(["ask", "--model", out, "--index", idx, q, "--json"]) == 0
    assert "answer" in json.loads(capsys.readouterr().out)


def test_explicit_sft_mode(tmp_path, tokenizer, world, wstore, capsys):
    """--mode explicit: Search-R1 transcripts, loss only on the agent's own spans."""
    import copy

    from latentrag_plugins.baselines.explicit import ExplicitAgent
    from latentrag_plugins.model_zoo import build_llm
    from latentrag_plugins.training.explicit import render_example
    from latentrag_plugins.training.trajectories import write_trajectories

    trajs, _ = world
    store, tower = wstore
    tok = copy.deepcopy(tokenizer)
    agent = ExplicitAgent.init(
        build_llm("tiny", vocab_size=len(tok), seed=2), tower, tokenizer=tok, device="cpu",
        max_doc_tokens=24,
    )  # fmt: skip
    agent.save_pretrained(tmp_path / "agent")
    ex = render_example(agent, trajs[1], 3000)
    target = agent.tokenizer.decode([ex.input_ids[p + 1] for p in ex.label_pos])
    t = trajs[1]
    want = (
        "".join(f"<think> {s.thought} </think>\n<search> {s.subquery} </search>" for s in t.steps)
        + f"<think> {t.final_thought} </think>\n<answer> {t.answer} </answer>"
    )
    assert target == want  # prompt and <information> blocks carry no loss
    assert ex.input_ids[: len(agent.prompt_ids(t.question))] == agent.prompt_ids(t.question)

    write_trajectories(tmp_path / "traj.jsonl", trajs[:4])
    out = tmp_path / "out"
    args = ["train", "--mode", "explicit", "--model", str(tmp_path / "agent"), "--data",
            str(tmp_path / "traj.jsonl"), "--out", str(out), "--max-steps", "3", "--batch-size",
            "2", "--lr", "1e-3", "--log-every", "1", "--save-every", "0", "--no-progress", "--json"]  # fmt: skip
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "explicit"
    log = _log(out)
    assert len(log) == 3 and log[-1]["loss"] < log[0]["loss"]
    trained = ExplicitAgent.from_pretrained(out, device="cpu")
    res = trained.run(t.question, store, max_turns=1)
    assert res.steps
    assert main(["train", "--mode", "explicit", "--model", str(tmp_path), "--data",
                 str(tmp_path / "traj.jsonl"), "--out", str(tmp_path / "o2")]) == 1  # fmt: skip
    assert "not an explicit agent checkpoint" in capsys.readouterr().err


def test_metrics_log_tensorboard_optional(tmp_path, monkeypatch):
    import types

    from latentrag_plugins.training.metrics_log import MetricsLog

    seen = []

    class Writer:
        def __init__(self, logdir):
            seen.append(("dir", logdir))

        def add_scalar(self, tag, value, step):
            seen.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            seen.append("closed")

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer)
    )
    log = MetricsLog(tmp_path)
    log.write({"step": 3, "loss": 1.5, "note": "x"})
    log.close()
    assert ("train/loss", 1.5, 3) in seen and "closed" in seen
    assert json.loads((tmp_path / "train_log.jsonl").read_text())["loss"] == 1.5
    MetricsLog(tmp_path / "quiet", enabled=False).write({"step": 1})  # other processes: no-op
    assert not (tmp_path / "quiet").exists()


def test_query_tower_layers_trains_only_the_last_layers(tokenizer):
    from latentrag_plugins.training.config import TrainConfig
    from latentrag_plugins.training.trainable import setup_trainable
    from tests.conftest import make_model

    m = make_model(tokenizer, "tiny")
    setup_trainable(m, TrainConfig(full_finetune=True, query_tower_layers=1))
    enc = m.query_tower.encoder
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.5.") for n in trainable)
    assert not any(p.requires_grad for p in m.doc_tower.parameters())


def test_jsonl_errors_name_file_and_line(tmp_path):
    from latentrag_plugins.errors import LatentRAGError
    from latentrag_plugins.io_utils import read_jsonl

    bad = tmp_path / "t.jsonl"
    bad.write_bytes(b'{"a": 1}\n\n{"b": "\xff"}\n')
    with pytest.raises(LatentRAGError, match=r"t\.jsonl:3: not valid UTF-8"):
        list(read_jsonl(bad))
    bad.write_text('{"a": 1}\n[1]\n', encoding="utf-8")
    with pytest.raises(LatentRAGError, match=r"t\.jsonl:2: expected a JSON object"):
        list(read_jsonl(bad))


def test_the_package_exports_functions_not_same_named_modules():
    import importlib

    import latentrag_plugins.training as training

    for name in training.__all__:
        obj = getattr(training, name)
        assert not isinstance(obj, type(importlib)), name  # e.g. `prepare` the function

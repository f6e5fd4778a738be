"""Build and pretrain the demo's base LLM from scratch on a text corpus (on a GPU if there is one;
CPU-friendly).

No pretrained LLM can be downloaded here, so the demo starts from a small Qwen2-shaped model
(``model_zoo.LLM_SHAPES["demo"]``) with a byte-level BPE tokenizer trained on the corpus, or a
tokenizer that shares the retriever's pieces (:mod:`.shared_vocab`), pretrained with plain
next-token prediction on texts packed whole into rows (the demo uses other worlds' passages and
reading texts, :mod:`.reading`), then optionally pretrained further (:func:`continue_pretraining`).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..devices import resolve_device
from ..io_utils import atomic_path
from ..model_zoo import build_llm, build_tokenizer
from ..tokens import load_tokenizer
from .shared_vocab import init_embeddings_from_retriever, retriever_tokenizer


def pack(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack whole texts (each + EOS) greedily into rows of at most ``seq_len`` tokens.

    A text never straddles two rows, so a question and its passages stay together; longer texts
    are cut to ``seq_len``.

    Returns:
        ``input_ids (N, seq_len)`` padded with the pad token, and ``labels (N, seq_len)`` with
        -100 on padding.
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows: list[list[int]] = []
    cur: list[int] = []
    for t in texts:
        ids = (tokenizer(t, add_special_tokens=False)["input_ids"] + [eos])[:seq_len]
        if len(cur) + len(ids) > seq_len:
            rows.append(cur)
            cur = []
        cur += ids
    if cur:
        rows.append(cur)
    if not rows or not rows[0]:
        raise ValueError("no text to pretrain on")
    inputs = torch.full((len(rows), seq_len), pad, dtype=torch.long)
    labels = torch.full((len(rows), seq_len), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        inputs[i, : len(r)] = torch.tensor(r)
        labels[i, : len(r)] = torch.tensor(r)
    return inputs, labels


def pretrain(
    model: PreTrainedModel,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    warmup: int = 50,
    seed: int = 0,
    log_path: str | os.PathLike[str] | None = None,
) -> list[dict[str, float]]:
    """Next-token pretraining on packed rows (:func:`pack`) with AdamW and a cosine schedule.

    Returns:
        The logged losses (every 10 steps), also appended to ``log_path`` as JSONL if given.
    """
    inputs, labels = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )
    model.train()
    logs: list[dict[str, float]] = []
    bar = tqdm(range(steps), desc="pretraining", unit="step")
    t0 = time.perf_counter()
    for step in bar:
        idx = torch.randint(0, inputs.shape[0], (batch_size,), generator=gen)
        batch, target = inputs[idx].to(model.device), labels[idx].to(model.device)  # (B, L)
        loss = model(input_ids=batch, labels=target).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == steps - 1:
            rec = {
                "step": step,
                "loss": loss.item(),
                "lr": sched.get_last_lr()[0],
                "time_s": time.perf_counter() - t0,
            }
            logs.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}")
            if log_path:
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
    model.eval()
    return logs


def build_base_lm(
    texts: Sequence[str],
    out: str | os.PathLike[str],
    *,
    shape: str = "demo",
    vocab_size: int = 4096,
    seq_len: int = 256,
    steps: int = 2000,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    special_tokens: Sequence[str] = (),
    tokenizer_texts: Sequence[str] | None = None,
    retriever: str | None = None,
    device: str | None = None,
) -> Path:
    """Train a tokenizer on ``texts``, pretrain a ``shape`` LLM on them, save an HF model dir.

    The directory loads with ``AutoModelForCausalLM`` / ``tokens.load_tokenizer`` and so works as
    ``latentrag init --base-model DIR``.

    Args:
        special_tokens: Tokens that ``texts`` use as single special tokens (e.g. ``<answer>``).
        tokenizer_texts: Texts the tokenizer is trained on (default ``texts``). Texts of another
            world keep its names out of the vocabulary, so names split into pieces in training
            as they do in unseen worlds.
        retriever: Share this WordPiece retriever's tokenization instead of training a BPE
            (``vocab_size`` is then unused): the vocabulary is the retriever's pieces that
            ``tokenizer_texts`` use, and their embeddings start from the retriever's
            (:mod:`.shared_vocab`).
        device: Where to pretrain (default: a GPU if there is one, else the CPU).
    """
    if retriever:
        tok = retriever_tokenizer(tokenizer_texts or texts, retriever)
    else:
        tok = build_tokenizer(tokenizer_texts or texts, vocab_size=vocab_size)
    if special_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    model = build_llm(shape, vocab_size=len(tok), seed=seed)
    if retriever:
        init_embeddings_from_retriever(model, tok, retriever)
    model.to(resolve_device(device))
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    data = pack(tok, texts, seq_len)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        logs = pretrain(
            model,
            data,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            log_path=tmp / "pretrain_log.jsonl",
        )
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "pretrain.json").write_text(
            json.dumps({"shape": shape, "vocab_size": len(tok), "seq_len": seq_len, "steps": steps,
                        "batch_size": batch_size, "lr": lr, "seed": seed, "retriever": retriever,
                        "rows": int(data[0].shape[0]), "final_loss": logs[-1]["loss"],
                        "device": str(model.device)},
                       indent=2, sort_keys=True)
        )  # fmt: skip
    return Path(out)


def continue_pretraining(
    base: str | os.PathLike[str],
    texts: Sequence[str],
    *,
    seq_len: int = 512,
    steps: int = 1000,
    batch_size: int = 16,
    lr: float = 5e-4,
    seed: int = 1,
    device: str | None = None,
) -> Path:
    """Pretrain the base LM in ``base`` further on ``texts`` (a new warm-up and cosine
    schedule), replacing its weights atomically; the tokenizer stays as it is. ``device`` as in
    :func:`build_base_lm`."""
    from transformers import AutoModelForCausalLM

    base = Path(base)
    tok = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base).to(resolve_device(device))
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    data = pack(tok, texts, seq_len)
    info = json.loads((base / "pretrain.json").read_text())
    with atomic_path(base) as tmp:
        tmp.mkdir()
        log = tmp / "pretrain_log.jsonl"
        log.write_text((base / "pretrain_log.jsonl").read_text())
        logs = pretrain(
            model, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, log_path=log
        )
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        phase = {
            "device": str(model.device),
            "steps": steps,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "lr": lr,
            "seed": seed,
            "rows": int(data[0].shape[0]),
            "final_loss": logs[-1]["loss"],
        }
        info.setdefault("continued", []).append(phase)
        (tmp / "pretrain.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    return base

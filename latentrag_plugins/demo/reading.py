"""Reading-comprehension texts for pretraining the demo's base LLM.

A pretrained LLM such as Qwen2.5 can already read retrieved passages and copy an answer out of
them; a model trained from scratch on passages alone cannot. So the base LM also sees, for worlds
of *other* seeds, each teacher trajectory's retrieved documents in the prompt layout LatentRAG and
naive RAG use, followed by the answer::

    {QUESTION_PROMPT} {question}<information> Doc 1 (Title: t) body ...</information>
    <information> ...</information><answer> {answer}</answer>

The entities of those worlds never occur in the seed-0 test set, so this teaches the skill
(find the fact in the context, copy the entity), not the test facts.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from typing import Any

from ..prompts import QUESTION_PROMPT, doc_entry
from ..results import RetrievedDoc
from ..tokens import ANSWER, ANSWER_END, INFO, INFO_END, load_tokenizer

#: Special tokens the reading texts use; the base tokenizer holds them, so their embeddings are
#: pretrained (``LatentRAG.init`` keeps control tokens that already exist).
READING_TOKENS = (INFO, INFO_END, ANSWER, ANSWER_END)


def render_reading(question: str, blocks: Sequence[Sequence[str]], answer: str) -> str:
    """One reading text: the question prompt, one information block per step, the answer.

    Args:
        question: The question.
        blocks: Per retrieval step, the passages (``title\\nbody``) retrieved.
        answer: The answer text.
    """
    parts = [f"{QUESTION_PROMPT} {question.strip()}"]
    for docs in blocks:
        body = ""
        for i, contents in enumerate(docs, start=1):
            body += "".join(doc_entry(i, RetrievedDoc(id="", text=contents, score=0.0)))
        parts.append(f"{INFO}{body}{INFO_END}")
    parts.append(f"{ANSWER} {answer.strip()}{ANSWER_END}")
    return "".join(parts)


def reading_texts(
    trajectories: Iterable[dict[str, Any]],
    supporting: dict[str, Sequence[str]],
    *,
    max_docs: int = 5,
    seed: int = 0,
) -> list[str]:
    """Reading texts from teacher trajectories (schema of ``docs/training.md``).

    Each trajectory keeps its steps' documents, de-duplicated and thinned to at most
    ``max_docs`` by dropping random non-supporting ones, so every text still holds the evidence.

    Args:
        trajectories: Trajectory records (``id``, ``question``, ``steps[].documents``, ``answer``).
        supporting: Question id -> supporting passage ids.
        max_docs: Most passages per text.
        seed: Seed of the thinning.
    """
    rng = random.Random(seed)
    out = []
    for tr in trajectories:
        gold = set(supporting.get(tr.get("id", ""), ()))
        seen: set[str] = set()
        blocks = []
        for step in tr["steps"]:
            docs = [d for d in step["documents"] if d["id"] not in seen]
            seen.update(d["id"] for d in docs)
            blocks.append(docs)
        extra = [d["id"] for b in blocks for d in b if d["id"] not in gold]
        rng.shuffle(extra)
        n_all = sum(len(b) for b in blocks)
        drop = set(extra[: max(0, n_all - max_docs)])
        kept = [[d["contents"] for d in b if d["id"] not in drop] for b in blocks]
        out.append(render_reading(tr["question"], [b for b in kept if b], tr["answer"]))
    return out


def reading_accuracy(
    base: str | os.PathLike[str],
    corpus: str | os.PathLike[str],
    questions: str | os.PathLike[str],
    limit: int = 200,
) -> dict[str, float]:
    """How well a base LM reads: EM (%) by hops when the *gold* passages are in the prompt.

    An upper bound for any RAG method built on the LM; the demo reports it per model.

    Args:
        base: The base LM directory (with the reading tokens).
        corpus: The world's ``corpus.jsonl``.
        questions: A questions file (``supporting_ids`` are the gold passages).
        limit: Questions read (the first ``limit``).

    Returns:
        ``{"all": em, "1": em, "2": em, ...}`` in percent, plus ``"n"``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from ..io_utils import read_jsonl
    from ..metrics import exact_match

    tok = load_tokenizer(base)
    llm = AutoModelForCausalLM.from_pretrained(base).eval()
    docs = {d["id"]: d["contents"] for _, d in read_jsonl(corpus)}
    end = tok.convert_tokens_to_ids(ANSWER_END)
    scores: dict[str, list[float]] = {"all": []}
    for _, q in list(read_jsonl(questions))[:limit]:
        text = render_reading(q["question"], [[docs[i] for i in q["supporting_ids"]]], "")
        prompt = text[: text.rindex(ANSWER) + len(ANSWER)]
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])  # (1, L)
        with torch.inference_mode():
            out = llm.generate(
                ids, max_new_tokens=24, do_sample=False, eos_token_id=end,
                pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        em = exact_match(answer, q["golden_answers"])
        scores["all"].append(em)
        scores.setdefault(str(q["hops"]), []).append(em)
    res = {k: 100 * sum(v) / len(v) for k, v in scores.items() if v}
    return {**res, "n": float(len(scores["all"]))}


def world_texts(seed: int, size: str = "default") -> tuple[list[str], list[str]]:
    """The passages and the reading texts of the world with ``seed`` (lexical-search oracle)."""
    from ..world import build_dataset

    ds = build_dataset(seed=seed, size=size)
    supporting = {q.record["id"]: q.record["supporting_ids"] for q in ds.questions["train"]}
    passages = [d["contents"] for d in ds.corpus.docs]
    return passages, reading_texts(ds.trajectories, supporting, seed=seed)


__all__ = [
    "READING_TOKENS",
    "reading_accuracy",
    "reading_texts",
    "render_reading",
    "world_texts",
]

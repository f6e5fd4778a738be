"""The LatentRAG inference loop: one LLM forward pass per latent step, KV cache reused.

Per step, every active question feeds ``[new docs] <think_1..m> <query_1..n> <answer>`` in one
pass (speculative query slots, DESIGN §3). Attention is causal, so the thought states and the
action read at ``<think_m>`` do not see the query slots. ``<answer>`` is a branch that skips the
query slots (attention mask and position), so it equals an ``<answer>`` fed after cropping them.
If the action is ``<answer>``, the query slots are cut from the cache (or masked out, when other
questions in the batch go on) and the branch's logits start the answer; else the branch is
dropped. One pass per step, answer included.

The loop is a generator: it yields :class:`SearchRequest` objects and receives the documents, so
sync stores, async stores (LangChain, LlamaIndex) and batched stores all drive the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .context import BatchedContext, Generated, TextStream, greedy_generate
from .errors import StoreError
from .extractive import SpanConstraint, source_tokens
from .results import LatentRAGResult, RetrievedDoc, Step
from .runtime import StageClock, check_questions, check_store, evaluating
from .tokens import special_ids

if TYPE_CHECKING:
    from .model import LatentRAG


@dataclass
class SearchRequest:
    """A batch of latent query embeddings to search, one per question still retrieving.

    Attributes:
        step: 0-based step index.
        rows: Indices of the questions (into the batch) the embeddings belong to.
        embeddings: ``(len(rows), dim)`` float32, L2-normalised.
        k: Documents wanted per embedding.
        latents: The latent subquery tokens behind the embeddings, ``(len(rows), n, d_llm)``,
            e.g. to decode a subquery text on the fly.
        thoughts: The latent thought tokens of the same step, ``(len(rows), m, d_llm)``, e.g. to
            decode the thought on the fly.
    """

    step: int
    rows: list[int]
    embeddings: np.ndarray
    k: int
    latents: torch.Tensor | None = None
    thoughts: torch.Tensor | None = None


@dataclass
class _Row:
    """Per-question state of the loop."""

    pending: list[int]  # token ids to feed before the next slots
    steps: list[Step] = field(default_factory=list)
    latents: list[dict[str, Any]] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # the LLM context, as the model saw it
    answering: bool = False
    answer_fed: bool = False  # <answer> already fed (merged into the forced last step's pass)
    passes: int = 0
    input_tokens: int = 0


def question_prompt(model: LatentRAG, question: str) -> list[int]:
    """The token ids of ``question``'s prompt.

    Raises:
        ValueError: The prompt leaves no room for the latent slots and the answer within the
            model's ``max_context_tokens``.
    """
    cfg = model.config
    ids = model.prompts.question(question)
    need = len(ids) + cfg.n_think + cfg.n_query + cfg.max_answer_tokens + 2
    if need > cfg.max_context_tokens:
        raise ValueError(
            f"question is too long: it needs {need} tokens with the slots, over the "
            f"max_context_tokens budget of {cfg.max_context_tokens}: {question[:60]!r}..."
        )
    return ids


@evaluating()
def latent_loop(
    model: LatentRAG,
    questions: list[str],
    *,
    max_steps: int | None = None,
    top_k: int | None = None,
    decode: bool = False,
    logit_lens: bool = False,
    store: Any = None,
    min_steps: int = 0,
    generate_answer: bool = True,
    on_token: Callable[[int, str], None] | None = None,
    final_thought: bool | None = None,
) -> Generator[SearchRequest, list[list[RetrievedDoc]], list[LatentRAGResult]]:
    """Run LatentRAG on a batch of questions; yields search requests, returns the results.

    Args:
        model: The model.
        questions: Non-empty questions.
        max_steps: Most retrieval steps per question.
        top_k: Documents per retrieval.
        decode: Decode latent thoughts and subqueries to text at the end (one batched generation).
        logit_lens: Attach LogitLens top-5 tokens to every step.
        store: If given, checked for encoder compatibility before any work.
        min_steps: Retrieve at least this many times (capped by ``max_steps``), whatever the
            action; retrievers built on the loop use 1.
        generate_answer: Generate the final answer (False: stop after the last step; the
            result's answer is empty).
        on_token: Called as ``on_token(row, text)`` for each answer token, for streaming.
        final_thought: Without an answer, still run the pass after the last allowed retrieval
            to get its thought latent (default: with ``decode`` or ``logit_lens``). Without it,
            a retrieval-only run that reaches ``max_steps`` ends with a forced answer step
            that has no latents.
    """
    cfg = model.config
    if final_thought is None:
        final_thought = decode or logit_lens
    max_steps = cfg.max_steps if max_steps is None else max_steps
    top_k = cfg.top_k if top_k is None else top_k
    if max_steps < 0 or top_k < 1:
        raise ValueError("max_steps must be >= 0 and top_k >= 1")
    if not questions:
        return []
    check_questions(questions)
    if store is not None:
        check_store(store, model.encoder_id, model.dim)

    m, n = cfg.n_think, cfg.n_query
    answer_reserve = cfg.max_answer_tokens + 2
    clock = StageClock(model.device)
    rows = [_Row(pending=question_prompt(model, q)) for q in questions]
    batch = len(rows)
    ids = model.ids
    ctx = BatchedContext(model.llm, batch, ids.pad, model.wide_llm)
    # <answer> rides in every step's pass: after the query slots, as a branch that skips them.
    branch = generate_answer and ctx.can_branch
    answer_logits: torch.Tensor | None = None  # (B, V) first answer token, rows with answer_fed

    for step in range(max_steps + 1):
        live = [i for i, r in enumerate(rows) if not r.answering]
        if not live:
            break
        if step == max_steps and not (generate_answer or final_thought):
            for i in live:  # that pass would only yield a thought nobody reads
                rows[i].steps.append(Step(index=step, action="answer", forced=True))
            break
        speculative = step < max_steps  # feed query slots only if a retrieval is allowed
        # At the forced last step the action is known: <answer> joins the same pass.
        merge = not speculative and generate_answer
        spec_answer = speculative and branch
        tail = model.prompts.query_slots() if speculative else [ids.answer] if merge else []
        tail += [ids.answer] if spec_answer else []
        slots = model.prompts.think_slots() + tail
        chunks = [rows[i].pending + slots if i in live else [] for i in range(batch)]
        with clock.stage("prefill" if step == 0 else "reasoning"), torch.inference_mode():
            # Only the slots are read: the lean decoder skips the rest in its last layer.
            hidden = ctx.feed(chunks, branch=n if spec_answer else 0, keep=len(slots))  # (B, S, d)
            h_think = hidden[:, -len(slots) :][:, :m]  # (B, m, d)
            h_query = hidden[:, m - len(slots) :][:, :n] if speculative else None  # (B, n, d)
            act = ctx.logits(h_think[:, -1], rows=[ids.query[0], ids.answer])  # (B, 2)
            wants = (act[:, 0] > act[:, 1]).tolist()
            if step < min_steps:
                wants = [True] * batch
        used = ctx.next_pos.tolist()  # positions so far, per row (one device read)
        for i in live:
            r = rows[i]
            r.passes += 1
            r.input_tokens += len(chunks[i])
            r.token_ids += chunks[i]
            r.pending = []
            lat = {"think": h_think[i].clone()}  # (m, d), not a view that keeps ``hidden``
            if speculative and wants[i] and not _budget_exhausted(used[i], cfg, answer_reserve):
                lat["query"] = h_query[i].clone()  # (n, d)
            else:
                r.answering = True
                r.answer_fed = merge or spec_answer
                r.steps.append(Step(index=step, action="answer", forced=bool(wants[i])))
            r.latents.append(lat)
        searching = [i for i in live if not rows[i].answering]
        answering_now = [i for i in live if rows[i].answering]
        keep = int(spec_answer)  # the <answer> branch after the query slots
        with clock.stage("prefill" if step == 0 else "reasoning"), torch.inference_mode():
            if answering_now and (merge or spec_answer):
                fed = ctx.logits(hidden[:, -1])  # (B, V), at the fed <answer>
                answer_logits = fed if answer_logits is None else answer_logits
                answer_logits[answering_now] = fed[answering_now]
            if speculative:
                ctx.drop_last(n, answering_now, keep=keep)
                ctx.drop_last(keep, searching)
        if speculative:
            for i in answering_now:
                del rows[i].token_ids[
                    len(rows[i].token_ids) - n - keep : len(rows[i].token_ids) - keep
                ]
            for i in searching:
                del rows[i].token_ids[len(rows[i].token_ids) - keep :]
        if not searching:
            continue
        with clock.stage("reasoning"), torch.inference_mode():
            emb = model.latent_query_embedding(h_query[searching])  # (b, dim)
            emb_np = emb.float().cpu().numpy()
        with clock.stage("retrieval"):
            found = yield SearchRequest(
                step=step,
                rows=searching,
                embeddings=emb_np,
                k=top_k,
                latents=h_query[searching],
                thoughts=h_think[searching],
            )
        if found is None or len(found) != len(searching):
            raise StoreError("the search driver returned no documents for some questions")
        used = ctx.next_pos.tolist()  # after the query slots were dropped
        for i, docs in zip(searching, found):
            r = rows[i]
            r.steps.append(Step(index=step, action="retrieve", docs=list(docs)))
            budget = cfg.max_context_tokens - used[i] - m - n - answer_reserve
            r.pending = model.prompts.information(docs, budget, cfg.max_doc_tokens)

    gens = [Generated([], False, 0, fed=False) for _ in rows]
    if generate_answer:
        with clock.stage("answer"), torch.inference_mode():
            # Feed <answer> (the chosen action) where it is not fed yet, then decode greedily
            # up to </answer> or EOS.
            need = [[] if r.answer_fed else [ids.answer] for r in rows]
            first = answer_logits
            if any(need):
                fed = ctx.logits(ctx.feed(need, keep=1)[:, -1])  # (B, V)
                if first is None:
                    first = fed
                else:
                    now = torch.tensor([bool(c) for c in need], device=fed.device)  # (B,)
                    first = torch.where(now[:, None], fed, first)
            stop = {ids.answer_end} | ({ids.eos} if ids.eos is not None else set())
            stream = TextStream(model.tokenizer, on_token) if on_token is not None else None
            spans = answer_spans(model, [r.token_ids for r in rows], stop)
            gens = greedy_generate(
                ctx, first, max_new=cfg.max_answer_tokens, stop=stop,
                banned=sorted(ids.all - {ids.answer_end}), on_token=stream, spans=spans,
            )  # fmt: skip
            if stream is not None:
                stream.flush()

    results = []
    for r, g in zip(rows, gens):
        extra_pass = int(g.fed and not r.answer_fed)  # the pass that fed <answer> alone
        if g.fed:
            r.token_ids += [ids.answer] * extra_pass + g.tokens
        res = LatentRAGResult(
            answer=model.tokenizer.decode(g.tokens, skip_special_tokens=True).strip(),
            steps=r.steps,
            forward_passes=r.passes + extra_pass + g.feeds,
            input_tokens=r.input_tokens + extra_pass,
            output_tokens=len(g.tokens) + int(g.stopped),
        )
        res._latents = r.latents
        res._token_ids = r.token_ids
        results.append(res)
    if decode or logit_lens:
        from .decoding import decode_latents, logit_lens_tokens

        if decode:
            with clock.stage("decode"):
                extra = decode_latents(model, results)
            for res in results:
                res.forward_passes += extra
        if logit_lens:
            logit_lens_tokens(model, results)
    timings = clock.timings()
    for res in results:
        res.timings_ms = timings
    return results


def answer_spans(
    model: LatentRAG, contexts: list[list[int]], stop: set[int]
) -> SpanConstraint | None:
    """The extractive-answer constraint over each row's context (None unless configured)."""
    if not model.config.extractive_answers:
        return None
    control = model.ids.all | special_ids(model.tokenizer)
    return SpanConstraint([source_tokens(c, control) for c in contexts], stop)


def _budget_exhausted(used: int, cfg: Any, reserve: int) -> bool:
    """True when another step (docs + slots) can no longer fit a context of ``used`` tokens."""
    left = cfg.max_context_tokens - used - reserve
    return left < 2 * (cfg.n_think + cfg.n_query) + 16


def drive(
    gen: Generator[SearchRequest, list[list[RetrievedDoc]], list[LatentRAGResult]], store: Any
) -> list[LatentRAGResult]:
    """Run a loop generator against a sync store (``search_batch`` if present, else ``search``)."""
    try:
        req = next(gen)
        while True:
            req = gen.send(search_store(store, req))
    except StopIteration as stop:
        return stop.value


def search_store(store: Any, req: SearchRequest) -> list[list[RetrievedDoc]]:
    """Search ``store`` for every embedding of a request."""
    if hasattr(store, "search_batch"):
        return store.search_batch(req.embeddings, req.k)
    if not hasattr(store, "search"):
        raise StoreError(f"{type(store).__name__} has no search(embedding, k) method")
    return [store.search(e, req.k) for e in req.embeddings]


def result_docs(results: Sequence[LatentRAGResult]) -> list[list[RetrievedDoc]]:
    """All retrieved documents of each result, in step then rank order."""
    return [[d for s in r.steps for d in s.docs] for r in results]

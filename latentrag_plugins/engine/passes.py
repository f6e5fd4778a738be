"""The latent loop's two kinds of forward pass, each over any set of requests at once.

- :func:`step_pass`: every request ready for a step feeds ``[documents] <think_1..m>
  <query_1..n> <answer>`` in one pass (speculative query slots: attention is causal, so the
  thought states and the action read at ``<think_m>`` do not see them; ``<answer>`` is a branch
  that skips the query slots, in attention and position, so it equals an ``<answer>`` fed after
  cropping them). A request that retrieves drops the branch; one that answers drops the query
  slots and keeps the branch, whose logits give its first answer token: answering costs no
  extra pass. At the forced last step ``<answer>`` follows the thought slots directly.
- :func:`token_pass`: every answering request feeds its next answer token (or ``<answer>``
  alone, for an LLM without branch masks).

Requests sit at different steps, so slots, branches and drops are per row. Each pass assembles
its rows' caches and splits them back (:mod:`.rows`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..context import BatchedContext
from ..extractive import quote_constraint
from ..results import Step
from ..tokens import special_ids
from .request import LatentRequest, Phase, SearchJob
from .rows import open_context, split
from .token_group import TokenGroup

if TYPE_CHECKING:
    from ..config import LatentRAGConfig
    from ..model import LatentRAG


@dataclass
class StepPlan:
    """What one request feeds in a step pass after its pending documents."""

    slots: list[int]  # <think_1..m> and its tail
    speculative: bool  # the query slots are fed: a retrieval is still allowed
    merged: bool  # forced last step: <answer> right after the thought slots
    branch: bool  # <answer> rides as a branch after the query slots


def plan_step(model: LatentRAG, req: LatentRequest, can_branch: bool) -> StepPlan | None:
    """The slots of ``req``'s next step; None when that pass would only yield a thought that
    nobody reads (a retrieval-only request at its last allowed step)."""
    opts, ids, prompts = req.options, model.ids, model.prompts
    speculative = req.step < opts.max_steps
    if not speculative and not (opts.generate_answer or opts.final_thought):
        return None
    merged = not speculative and opts.generate_answer
    branch = speculative and opts.generate_answer and can_branch
    tail = prompts.query_slots() if speculative else [ids.answer] if merged else []
    tail = tail + ([ids.answer] if branch else [])
    return StepPlan(prompts.think_slots() + tail, speculative, merged, branch)


def _context(model: LatentRAG, reqs: Sequence[LatentRequest], width: int) -> BatchedContext:
    return open_context(model.llm, model.ids.pad, model.wide_llm, [r.kv for r in reqs], width)


def elapsed_ms(t0: float, device: torch.device) -> float:
    """Milliseconds since ``t0``, once the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def step_pass(
    model: LatentRAG, reqs: list[LatentRequest], plans: list[StepPlan]
) -> list[SearchJob]:
    """Run one step of every request in ``reqs`` in one forward pass.

    Each request records its step (action, latents); one that retrieves moves to ``SEARCH``
    (its job is returned), one that answers to ``GENERATE`` (``DONE`` without an answer).
    """
    cfg, ids = model.config, model.ids
    m, n = cfg.n_think, cfg.n_query
    chunks = [r.pending + p.slots for r, p in zip(reqs, plans)]
    keep = max(len(p.slots) for p in plans)
    t0 = time.perf_counter()
    with torch.inference_mode():
        ctx = _context(model, reqs, max(len(c) for c in chunks))
        branches = [n if p.branch else 0 for p in plans]
        hidden = ctx.feed(chunks, branch=branches, keep=keep)  # (B, keep, d)
        at = [keep - len(p.slots) for p in plans]  # where each row's slots start
        h_think = torch.stack([hidden[i, a : a + m] for i, a in enumerate(at)])  # (B, m, d)
        act = ctx.logits(h_think[:, -1], rows=[ids.query[0], ids.answer])  # (B, 2)
        wants = (act[:, 0] > act[:, 1]).tolist()
        used = ctx.next_pos.tolist()
        retrieve = [
            p.speculative
            and (wants[i] or r.step < r.options.min_steps)
            and not _budget_exhausted(used[i], cfg)
            for i, (r, p) in enumerate(zip(reqs, plans))
        ]
        first = _first_answer_logits(ctx, hidden, plans, retrieve)
        _drop_unused_slots(ctx, plans, retrieve, n)
        for r, kv in zip(reqs, split(ctx)):
            r.kv = kv
    ms = elapsed_ms(t0, model.device)
    jobs, querying = [], [i for i, go in enumerate(retrieve) if go]
    for i, (r, chunk) in enumerate(zip(reqs, chunks)):
        r.took_part("prefill" if r.step == 0 else "reasoning", ms, len(reqs))
        r.input_tokens += len(chunk)
        r.pending = []
        latents = {"think": h_think[i].clone()}  # (m, d): not a view that keeps ``hidden``
        if retrieve[i]:
            latents["query"] = hidden[i, at[i] + m : at[i] + m + n].clone()  # (n, d)
            r.steps.append(Step(index=r.step, action="retrieve"))
            r.phase = Phase.SEARCH
        else:
            forced = bool(wants[i]) or r.step < r.options.min_steps
            r.steps.append(Step(index=r.step, action="answer", forced=forced))
            _start_answer(model, r, first.get(i))
        r.latents.append(latents)
        r.step += 1
    if querying:
        jobs = _search_jobs(model, [reqs[i] for i in querying])
    return jobs


def _budget_exhausted(used: int, cfg: LatentRAGConfig) -> bool:
    """True when another step (documents and slots) can no longer fit beside the answer."""
    left = cfg.max_context_tokens - used - (cfg.max_answer_tokens + 2)
    return left < 2 * (cfg.n_think + cfg.n_query) + 16


def _first_answer_logits(
    ctx: BatchedContext, hidden: torch.Tensor, plans: list[StepPlan], retrieve: list[bool]
) -> dict[int, torch.Tensor]:
    """Per answering row whose ``<answer>`` rode in this pass, its first answer logits ``(V,)``."""
    rows = [i for i, p in enumerate(plans) if not retrieve[i] and (p.merged or p.branch)]
    if not rows:
        return {}
    logits = ctx.logits(hidden[rows, -1])  # (b, V), at the fed <answer>
    return dict(zip(rows, logits))


def _drop_unused_slots(
    ctx: BatchedContext, plans: list[StepPlan], retrieve: list[bool], n: int
) -> None:
    """Cut what each row does not keep: an answering row its query slots (not the branch
    after them), a retrieving row its branch."""
    answering = [i for i, p in enumerate(plans) if p.speculative and not retrieve[i]]
    for branch in (True, False):
        rows = [i for i in answering if plans[i].branch == branch]
        ctx.drop_last(n, rows, keep=int(branch))
    ctx.drop_last(1, [i for i, p in enumerate(plans) if p.branch and retrieve[i]])


def _start_answer(model: LatentRAG, req: LatentRequest, logits: torch.Tensor | None) -> None:
    """Move an answering request to ``GENERATE`` (``DONE`` if it generates no answer)."""
    if not req.options.generate_answer:
        req.phase = Phase.DONE
        return
    req.phase = Phase.GENERATE
    req.logits = logits  # None: <answer> is fed in its first token pass
    req.answer.read([d.text for d in req.docs] + [req.question])
    if model.config.extractive_answers:
        control = model.ids.all | special_ids(model.tokenizer)
        req.spans = quote_constraint([req.kv.tokens], control, stop_ids(model))


def _search_jobs(model: LatentRAG, reqs: list[LatentRequest]) -> list[SearchJob]:
    """The latent query embeddings of the retrieving requests (one batched tower pass)."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        h_query = torch.stack([r.latents[-1]["query"] for r in reqs])  # (b, n, d)
        emb = model.latent_query_embedding(h_query).float().cpu().numpy()  # (b, dim)
    ms = elapsed_ms(t0, model.device)
    jobs = []
    for r, e in zip(reqs, emb):
        r.stages["reasoning"] += ms
        lat = r.latents[-1]
        jobs.append(SearchJob(r, r.step - 1, e, r.options.top_k, lat["query"], lat["think"]))
    return jobs


def stop_ids(model: LatentRAG) -> set[int]:
    """Tokens that end an answer: ``</answer>`` and EOS."""
    ids = model.ids
    return {ids.answer_end} | ({ids.eos} if ids.eos is not None else set())


def token_pass(
    model: LatentRAG, reqs: list[LatentRequest], group: TokenGroup | None = None
) -> tuple[list[LatentRequest], int]:
    """Pick every answering request's next token and feed it, in one forward pass (in
    ``group``'s preallocated cache, if given).

    Returns:
        The requests whose answer ended (on a stop token or the length cap), and the number
        of rows the pass fed (0: no pass).
    """
    ids, cap = model.ids, model.config.max_answer_tokens
    picks = _pick(model, [r for r in reqs if r.logits is not None])
    stop = stop_ids(model)
    feeding: list[LatentRequest] = []
    chunks: list[list[int]] = []
    ended: list[LatentRequest] = []
    for r in reqs:
        if r.logits is None:  # <answer> not fed yet (no branch): feed it alone
            chunk = [ids.answer]
            r.input_tokens += 1
        else:
            tok = picks[id(r)]
            if tok in stop:
                r.stopped = True
                ended.append(r)
                continue
            r.token(tok)
            if len(r.answer.tokens) >= cap:
                ended.append(r)
                continue
            chunk = [tok]
            r.fed += 1
        feeding.append(r)
        chunks.append(chunk)
    if group is not None:
        for r in ended:
            if r in group:
                group.release(r, keep_cache=False)
    if feeding:
        _feed_tokens(model, feeding, chunks, group)
    return ended, len(feeding)


def _pick(model: LatentRAG, reqs: list[LatentRequest]) -> dict[int, int]:
    """Greedy next answer tokens (control tokens other than ``</answer>`` banned; extractive
    answers restricted to their sources), keyed by ``id(request)``."""
    if not reqs:
        return {}
    with torch.inference_mode():
        logits = torch.stack([r.logits for r in reqs])  # (b, V)
        ban = sorted(model.ids.all - {model.ids.answer_end})
        logits[:, ban] = float("-inf")
        for j, r in enumerate(reqs):
            if r.spans is not None:
                logits[j : j + 1] = r.spans.mask(logits[j : j + 1], [0])
        picks = logits.argmax(-1).tolist()
    return {id(r): p for r, p in zip(reqs, picks)}


def _feed_tokens(
    model: LatentRAG,
    reqs: list[LatentRequest],
    chunks: list[list[int]],
    group: TokenGroup | None,
) -> None:
    t0 = time.perf_counter()
    with torch.inference_mode():
        if group is not None:
            group.hold(reqs)
            group.feed({id(r): c[0] for r, c in zip(reqs, chunks)})
        else:
            ctx = _context(model, reqs, 1)
            logits = ctx.logits(ctx.feed(chunks, keep=1)[:, -1])  # (B, V)
            for r, kv, row in zip(reqs, split(ctx), logits):
                r.kv, r.logits = kv, row
    ms = elapsed_ms(t0, model.device)
    for r in reqs:
        r.took_part("answer", ms, len(reqs))

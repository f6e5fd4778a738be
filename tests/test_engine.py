"""The engine: concurrent requests share forward passes and each gets what it gets alone."""

from __future__ import annotations

import asyncio
import copy
import threading

import pytest

from latentrag_plugins.engine import (
    EndRequest,
    Engine,
    EngineBusy,
    RequestCancelled,
    StepEvent,
    StoreSearch,
    ThoughtEvent,
    TokenEvent,
)
from latentrag_plugins.engine.answer_text import AnswerText
from tests.conftest import trace
from tests.test_model_loop import QS, CountPasses


class Gate:
    """A search function that waits at ``gate`` (an Event) before searching ``store``."""

    def __init__(self, store, gate: threading.Event | None = None) -> None:
        self.store, self.gate = store, gate or threading.Event()
        self.entered = threading.Event()

    def __call__(self, query):
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return self.store.search(query.embedding, query.k)


@pytest.fixture
def engine(model):
    eng = Engine(model)
    yield eng
    eng.close()


def alone(model, store, questions, **kw):
    return [model.run(q, store, **kw) for q in questions]


def run_threads(fn, n):
    barrier = threading.Barrier(n)
    out: list = [None] * n
    errors: list = []

    def go(i):
        barrier.wait()
        try:
            out[i] = fn(i)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return out


@pytest.mark.parametrize("decode", [False, True])
def test_concurrent_threads_get_what_each_gets_alone(model, store, force, decode):
    qs = QS * 2
    with force(model, "hidden"):
        want = alone(model, store, qs, max_steps=3, decode=decode)
        got = run_threads(lambda i: model.run(qs[i], store, max_steps=3, decode=decode), len(qs))
    assert trace(got) == trace(want)
    if decode:
        thoughts = [[(s.thought, s.subquery) for s in r.steps] for r in got]
        assert thoughts == [[(s.thought, s.subquery) for s in r.steps] for r in want]
    assert max(r.batch_size for r in got) > 1, "concurrent requests should share passes"
    assert [r.forward_passes for r in got] == [r.forward_passes for r in want]


def test_asyncio_tasks_with_async_searches_get_what_each_gets_alone(model, store, force, engine):
    async def search(query):
        await asyncio.sleep(0)
        return store.search(query.embedding, query.k)

    async def main():
        handles = [engine.submit(q, search, max_steps=3) for q in QS]
        return await asyncio.gather(*(h.aresult() for h in handles))

    with force(model, "hidden"):
        want = alone(model, store, QS, max_steps=3)
        got = asyncio.run(main())
    assert trace(got) == trace(want)


def test_a_request_arriving_mid_flight_joins_the_running_batch(model, store, force, engine):
    with force(model, "retrieve"):
        with CountPasses(model) as counter:
            want = alone(model, store, QS[:2], max_steps=3)
        separate = len(counter.lengths)
        first = Gate(store)
        with CountPasses(model) as counter:
            a = engine.submit(QS[0], first, max_steps=3)
            assert first.entered.wait(30)  # A has run its first step and waits for its store
            b = engine.submit(QS[1], StoreSearch(store), max_steps=3)
            first.gate.set()
            got = [a.result(30), b.result(30)]
    assert trace(got) == trace(want)
    assert len(counter.lengths) < separate  # B's passes ran with A's, not after them
    assert max(r.batch_size for r in got) > 1


def test_a_slow_search_does_not_hold_up_other_requests(model, store, force, engine):
    slow = Gate(store)
    with force(model, "hidden"):
        want = alone(model, store, QS[1:3], max_steps=3)
        a = engine.submit(QS[0], slow, max_steps=3, min_steps=1)
        assert slow.entered.wait(30)
        others = [engine.submit(q, StoreSearch(store), max_steps=3) for q in QS[1:3]]
        got = [h.result(30) for h in others]  # while A still waits for its store
        assert not slow.gate.is_set()
        slow.gate.set()
        assert a.result(30).steps
    assert trace(got) == trace(want)


def test_cancelling_one_request_ends_it_and_the_others_finish(model, store, force, engine):
    blocked = Gate(store)
    with force(model, "hidden"):
        want = alone(model, store, QS[1:], max_steps=3)
        a = engine.submit(QS[0], blocked, max_steps=3, min_steps=1)
        assert blocked.entered.wait(30)
        others = [engine.submit(q, StoreSearch(store), max_steps=3) for q in QS[1:]]
        a.cancel()
        with pytest.raises(RequestCancelled):
            a.result(30)
        got = [h.result(30) for h in others]
        blocked.gate.set()
    assert trace(got) == trace(want)
    _assert_nothing_left(engine)


def test_a_closed_stream_ends_its_answer_at_the_next_token(model, store, force, engine):
    with force(model, "answer"):
        handle = engine.submit(QS[0], StoreSearch(store), max_steps=0)
        events = handle.events(timeout=30)
        for event in events:
            if isinstance(event, TokenEvent):
                break
        events.close()  # the reader stops: the request is cancelled
        with pytest.raises(RequestCancelled):
            handle.result(30)
        full = engine.submit(QS[0], StoreSearch(store), max_steps=0).result(30)
    assert full.output_tokens > 1
    _assert_nothing_left(engine)


def test_events_come_in_order(model, store, force, engine):
    with force(model, "retrieve"):
        handle = engine.submit(QS[0], StoreSearch(store), max_steps=2, decode=True)
        events = list(handle.events(timeout=30))
        res = handle.result()
    kinds = [type(e).__name__[0] + str(getattr(e, "step", "")) for e in events]
    tokens = sum(k == "T" for k in kinds)
    assert kinds == ["T0", "S0", "T1", "S1", "T2", "S2"] + ["T"] * tokens
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.action for e in steps] == [s.action for s in res.steps]
    assert [[d.id for d in e.docs] for e in steps] == [[d.id for d in s.docs] for s in res.steps]
    thoughts = [e.thought for e in events if isinstance(e, ThoughtEvent)]
    assert thoughts == [s.thought for s in res.steps]
    text = "".join(e.text for e in events if isinstance(e, TokenEvent))
    assert text.strip() == res.answer


def test_a_full_queue_refuses_at_once(model, store):
    engine = Engine(model, max_batch=1, max_queue=1)
    gate = Gate(store)
    try:
        first = engine.submit(QS[0], gate, min_steps=1)
        second = engine.submit(QS[1], StoreSearch(store))
        with pytest.raises(EngineBusy, match="max_queue"):
            engine.submit(QS[2], StoreSearch(store))
        gate.gate.set()
        assert first.result(30) and second.result(30)
        engine.submit(QS[2], StoreSearch(store)).result(30)  # room again
    finally:
        engine.close()


def test_a_failing_search_fails_its_request_alone(model, store, force, engine):
    def broken(query):
        raise ConnectionError("store down")

    with force(model, "retrieve"):
        want = alone(model, store, QS[1:3], max_steps=2)
        bad = engine.submit(QS[0], broken, max_steps=2)
        good = [engine.submit(q, StoreSearch(store), max_steps=2) for q in QS[1:3]]
        with pytest.raises(ConnectionError, match="store down"):
            bad.result(30)
        got = [h.result(30) for h in good]
    assert trace(got) == trace(want)
    _assert_nothing_left(engine)


def test_bad_questions_are_refused_before_any_work(model, store, engine):
    with pytest.raises(ValueError, match="empty"):
        engine.submit("  ", StoreSearch(store))
    with pytest.raises(ValueError, match="too long"):
        engine.submit_many([QS[0], "why " * 5000], StoreSearch(store))
    _assert_nothing_left(engine)


def _assert_nothing_left(engine: Engine) -> None:
    """No request, row or search is left once every caller has its answer (the engine cleans
    up before it answers)."""
    assert engine.load == 0
    assert engine._scheduler.requests == [] and not engine._searching and not engine._waiting


class _Lower:
    """A tokenizer stand-in that lower-cases, as uncased WordPiece does."""

    def decode(self, tokens, skip_special_tokens=True):
        return "".join(tokens).lower()


def test_answers_take_the_casing_of_what_the_model_read():
    pieces: list[str] = []
    text = AnswerText(_Lower(), pieces.append)
    text.read(["Soukarholm\nThe river Voupai flows through Soukarholm."])
    for token in [" sou", "kar", "holm"]:
        text.add(token)
    assert text.finish() == "Soukarholm" and "".join(pieces) == " Soukarholm"
    other = AnswerText(_Lower())
    other.read(["Nothing here."])
    for token in ["big ", "city"]:
        other.add(token)
    assert other.finish() == "big city"  # not in the sources: as generated


def test_a_search_can_end_its_request(model, engine):
    def nothing(query):
        raise EndRequest

    res = engine.submit(QS[0], nothing, min_steps=1).result(30)
    assert [s.action for s in res.steps] == ["retrieve"] and res.answer == ""
    _assert_nothing_left(engine)


def test_token_passes_in_the_preallocated_group_equal_assembled_ones(
    model, store, force, monkeypatch, tokenizer
):
    from latentrag_plugins.baselines.explicit import ExplicitAgent
    from latentrag_plugins.baselines.explicit_force import ExplicitForce
    from latentrag_plugins.engine.token_group import TokenGroup

    agent = ExplicitAgent.init(
        copy.deepcopy(model.llm), model.doc_tower, tokenizer=copy.deepcopy(model.tokenizer),
        device="cpu", max_turn_tokens=24, max_answer_tokens=6,
    )  # fmt: skip
    forces = [ExplicitForce((9, 8), (6,), 5, filler="model"), None, None, None]

    def both():
        with force(model, "hidden"):
            latent = model.run_batch(QS, store, max_steps=3)
        explicit = agent.run_batch(QS[:1], store, max_turns=1, force=forces[:1])
        return latent + explicit + agent.run_batch(QS[1:], store, max_turns=1)

    assert TokenGroup.applies(model.llm)
    grouped = both()
    monkeypatch.setattr(TokenGroup, "applies", staticmethod(lambda llm: False))
    assembled = both()
    for g, a in zip(grouped, assembled):
        assert g._token_ids == a._token_ids and g.answer == a.answer
        assert (g.forward_passes, g.input_tokens, g.output_tokens) == (
            a.forward_passes, a.input_tokens, a.output_tokens,
        )  # fmt: skip


def test_the_token_group_computes_what_assembled_passes_compute(model):
    """Three rows of different lengths write four tokens each (one leaves after two): logits
    and caches equal those of passes over freshly assembled batches."""
    import torch

    from latentrag_plugins.context import BatchedContext
    from latentrag_plugins.engine.rows import open_context, split
    from latentrag_plugins.engine.token_group import TokenGroup

    class Row:
        kv = logits = None

    prompts = [model.prompts.question(q) for q in QS[:3]]
    with torch.inference_mode():
        ctx = BatchedContext(model.llm, 3, model.ids.pad)
        ctx.feed(prompts)
        kvs = split(ctx)
    grouped, assembled = [Row() for _ in kvs], [Row() for _ in kvs]
    for g, a, kv in zip(grouped, assembled, kvs):
        g.kv = a.kv = kv
    group = TokenGroup(model.llm, model.ids.pad)
    for step in range(4):
        rows = [0, 1, 2] if step < 2 else [0, 2]
        tokens = [7 + 3 * i + step for i in rows]
        group.hold([grouped[i] for i in rows])
        group.feed({id(grouped[i]): t for i, t in zip(rows, tokens)})
        with torch.inference_mode():
            ctx = open_context(model.llm, model.ids.pad, None, [assembled[i].kv for i in rows], 1)
            logits = ctx.logits(ctx.feed([[t] for t in tokens], keep=1)[:, -1])
            for i, kv, row in zip(rows, split(ctx), logits):
                assembled[i].kv, assembled[i].logits = kv, row
        for i in rows:
            torch.testing.assert_close(grouped[i].logits, assembled[i].logits, rtol=1e-4, atol=1e-4)
    group.hold([])
    for g, a in zip(grouped, assembled):
        assert g.kv.tokens == a.kv.tokens and g.kv.pos == a.kv.pos
        for x, y in zip(g.kv.keys + g.kv.values, a.kv.keys + a.kv.values):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_warmup_runs_every_kind_of_pass_and_leaves_nothing(model, engine):
    engine.warmup()
    assert engine.stats.passes >= 3  # two step passes and answer tokens
    _assert_nothing_left(engine)


def test_passes_run_with_the_engines_thread_count(model, store):
    """torch's thread count is per OS thread: the engine's thread, which runs every pass, takes
    its own setting (here 2; by default the library's, one on small machines)."""
    import torch

    seen: list[int] = []
    hook = model.llm.get_output_embeddings().register_forward_hook(
        lambda *a: seen.append(torch.get_num_threads())
    )
    engine = Engine(model, threads=2)
    try:
        engine.submit(QS[0], StoreSearch(store)).result(30)
        engine.config.threads = 1
        engine.submit(QS[0], StoreSearch(store)).result(30)
    finally:
        hook.remove()
        engine.close()
    assert seen[0] == 2 and seen[-1] == 1


def test_small_step_groups_wait_one_round_at_most():
    """Of several step groups the largest runs; a smaller one waits one round, never two."""
    from latentrag_plugins.engine.scheduler import hold_small

    a, b, c, d = (object() for _ in range(4))
    groups = [[a], [b, c], [d]]
    run, held = hold_small(groups, set())
    assert run == [[b, c]] and held == {id(a), id(d)}
    run, held = hold_small([[a], [b, c], [d]], held)  # the held ones run now
    assert run == [[a], [b, c], [d]] and held == set()
    assert hold_small([[a, b]], {id(a)}) == ([[a, b]], set())


def test_a_model_changed_between_requests_is_seen_by_the_next_one(model, store, force, engine):
    """The engine checks the model as requests join: a hook added after one request runs in
    the next one's passes (no lean path around it), and train mode is undone for the passes."""
    calls = []
    with force(model, "retrieve"):
        want = engine.submit(QS[0], StoreSearch(store), max_steps=1).result()
        layer = model.llm.get_decoder().layers[0]
        handle = layer.register_forward_hook(lambda *a: calls.append(1))
        try:
            model.train()
            got = engine.submit(QS[0], StoreSearch(store), max_steps=1).result()
        finally:
            handle.remove()
            model.eval()
    assert got.answer == want.answer and got.forward_passes == want.forward_passes
    assert len(calls) >= got.forward_passes  # every pass went through the hooked layer

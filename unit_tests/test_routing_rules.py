"""modelplug.routing on generated inputs: the health table's rules hold for any sequence of
calls, outcomes and clock moves; the router's orders are permutations with the promised
spread and stability."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from modelplug.errors import BadRequestError, ProviderTimeoutError, RateLimitError
from modelplug.routing import Endpoint, HealthTable, Router

ENDPOINTS = [Endpoint("openai", f"http://127.0.0.1:{8000 + i}/v1", "m") for i in range(3)]
OUTCOMES = {
    "ok": None,
    "timeout": ProviderTimeoutError("slow"),
    "429": RateLimitError("busy", retry_after=7.0),
    "400": BadRequestError("bad"),
}

steps = st.lists(st.one_of(
    st.tuples(st.just("call"), st.sampled_from(range(3)), st.sampled_from(sorted(OUTCOMES))),
    st.tuples(st.just("wait"), st.floats(min_value=0, max_value=40), st.just("")),
), max_size=60)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(steps=steps, threshold=st.integers(1, 3))
def test_the_health_table_keeps_its_rules_for_any_history(steps: list, threshold: int) -> None:
    clock = Clock()
    table = HealthTable(threshold=threshold, cooldown=10, max_cooldown=60, clock=clock)
    in_a_row = [0, 0, 0]
    for kind, value, outcome in steps:
        if kind == "wait":
            clock.now += value
            continue
        endpoint = ENDPOINTS[value]
        row_before = {r["endpoint"]: r for r in table.table()}.get(str(endpoint))
        admitted = table.admit(endpoint)
        if row_before is None or row_before["state"] == "closed":
            assert admitted  # a closed endpoint always takes traffic
        elif row_before["state"] == "open":
            assert not admitted  # never before its cooldown ends
        if not admitted:
            continue
        if row_before is not None and row_before["state"] == "half_open":
            assert not table.admit(endpoint)  # one probe at a time
        table.start(endpoint)
        error = OUTCOMES[outcome]
        table.finish(endpoint, error)
        unwell = outcome in ("timeout", "429")
        in_a_row[value] = in_a_row[value] + 1 if unwell else 0
        state = table.state(endpoint)
        [row] = [r for r in table.table() if r["endpoint"] == str(endpoint)]
        assert row["in_flight"] == 0
        if not unwell:
            assert state == "closed" and row["failures_in_a_row"] == 0
        elif in_a_row[value] >= threshold or (row_before or {}).get("state") == "half_open":
            assert row["state"] == "open"
            expected = 7.0 if outcome == "429" else None
            if expected is not None:
                assert row["retry_in_s"] == expected  # Retry-After, whatever the cooldown
            assert 0 < row["retry_in_s"] <= 60
        else:
            assert state == "closed"


@settings(max_examples=100, deadline=None)
@given(members=st.integers(1, 6), calls=st.integers(1, 60),
       strategy=st.sampled_from(["priority", "round_robin", "least_outstanding"]))
def test_every_order_is_a_permutation_and_round_robin_spreads_first_picks(
        members: int, calls: int, strategy: str) -> None:
    router = Router(strategy, HealthTable())
    names = [f"m{i}" for i in range(members)]
    firsts = []
    for _ in range(calls):
        order = router.order(names, names=names, endpoints=ENDPOINTS[:1] * members)
        assert sorted(order) == names
        firsts.append(order[0])
    counts = [firsts.count(n) for n in names]
    if strategy == "priority":
        assert counts[0] == calls
    else:  # no load in flight: least_outstanding rotates like round_robin
        assert max(counts) - min(counts) <= 1


@settings(max_examples=100, deadline=None)
@given(sessions=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=40,
                         unique=True), members=st.integers(2, 6), gone=st.integers(0, 5))
def test_affinity_is_stable_and_a_lost_member_moves_only_its_own_sessions(
        sessions: list[str], members: int, gone: int) -> None:
    gone %= members
    router = Router("round_robin", HealthTable())
    names = ["openai:m"] * members
    endpoints = [Endpoint("openai", f"http://10.0.0.{i}/v1", "m") for i in range(members)]
    home = {s: router.order(endpoints, names=names, endpoints=endpoints, session=s)
            for s in sessions}
    for s in sessions:  # stable across calls, whatever the rotation did meanwhile
        assert router.order(endpoints, names=names, endpoints=endpoints, session=s) == home[s]
    # Without one member, every session keeps its own ranking of the others: only the
    # sessions whose first choice was the lost member move, each to its second choice.
    rest = [e for i, e in enumerate(endpoints) if i != gone]
    for s in sessions:
        order = router.order(rest, names=names[1:], endpoints=rest, session=s)
        assert order == [e for e in home[s] if e != endpoints[gone]]


# -- continuing a cut stream ------------------------------------------------------------------


def _cut_after(items: str):
    def stream(conversation: str):
        yield from items
        raise ConnectionResetError("cut")
    return stream


def _continues(conversation: str):
    yield from f"<{conversation}>"


def _candidates(*specs):
    from modelplug.fallback import Candidate

    return [Candidate(name, target, None, None, continues=continues)
            for name, target, continues in specs]


def test_a_prefill_continuation_skips_candidates_that_cannot_continue() -> None:
    from modelplug.fallback import Continuation, FallbackPolicy

    policy = FallbackPolicy(health=False)
    sent: list[str] = []

    def resume(exc: BaseException) -> Continuation:
        return Continuation(lambda target: target("".join(sent)), prefill=bool(sent))

    def run(*specs) -> list[str]:
        sent.clear()
        for item in policy.stream(_candidates(*specs), lambda t: t(""), resume=resume):
            sent.append(item)
        return sent

    assert "".join(run(("a", _cut_after("ab"), True), ("b", lambda c: iter("no"), False),
                       ("c", _continues, True))) == "ab<ab>"
    # Nothing sent yet (held items only): any candidate starts afresh.
    assert "".join(run(("a", _cut_after(""), True), ("b", lambda c: iter("fresh"), False))) \
        == "fresh"
    # None can continue: the error that cut the stream, each skip noted on it.
    with pytest.raises(ConnectionResetError) as info:
        run(("a", _cut_after("ab"), True), ("b", lambda c: iter("no"), False))
    assert "b (UnsupportedCapabilityError" in info.value.__notes__[-1]


def test_a_continuing_candidate_that_refuses_hands_on_to_the_next() -> None:
    """After a cut the caller holds part of an answer: even an error that would not fail over
    (a 400) moves on to the next candidate, and with none left the cut itself is raised."""
    from modelplug.fallback import Continuation, FallbackPolicy

    def refuses(conversation: str):
        raise BadRequestError("prefill not accepted")
        yield

    policy = FallbackPolicy(health=False)
    resume = lambda exc: Continuation(lambda target: target("ab"), prefill=True)  # noqa: E731
    got = list(policy.stream(_candidates(("a", _cut_after("ab"), True), ("b", refuses, True),
                                         ("c", _continues, True)), lambda t: t(""),
                             resume=resume))
    assert "".join(got) == "ab<ab>"
    with pytest.raises(ConnectionResetError) as info:
        list(policy.stream(_candidates(("a", _cut_after("ab"), True), ("b", refuses, True)),
                           lambda t: t(""), resume=resume))
    assert "prefill not accepted" in info.value.__notes__[-1]


messages = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant", "tool"]),
    "content": st.one_of(st.none(), st.text(max_size=5),
                         st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                         "text": st.text(max_size=3)}),
                                  max_size=2))},
    optional={"tool_calls": st.just([{"id": "c1", "type": "function",
                                      "function": {"name": "f", "arguments": "{}"}}])}),
    min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(conversation=messages)
def test_continue_final_message_goes_exactly_to_the_rows_that_need_it(
        conversation: list) -> None:
    """vLLM and SGLang (row ``prefill="continue_final_message"``) get the flags exactly when the
    conversation ends in an assistant message with text and no tool calls; a row that reads a
    final assistant message natively (llama-server) or cannot continue (lmstudio) never does."""
    from modelplug import ChatRequest, create_backend
    from modelplug.backends.tooling import split_prefill

    prefill = bool(split_prefill(conversation)[1])
    last = conversation[-1]
    assert prefill == (last["role"] == "assistant" and not last.get("tool_calls") and bool(
        last["content"] if isinstance(last["content"], str) else "".join(
            p["text"] for p in last["content"] or [])))
    for model in ("vllm:m", "sglang:m", "llamaserver:m;tools", "lmstudio:m"):
        backend = create_backend(model)
        body = backend._body(ChatRequest(messages=conversation))
        extra = body.get("extra_body", {})
        flags = {k: extra[k] for k in ("continue_final_message", "add_generation_prompt")
                 if k in extra}
        wanted = backend.spec.prefill == "continue_final_message" and prefill
        assert flags == ({"continue_final_message": True, "add_generation_prompt": False}
                         if wanted else {})
        assert backend.continues_prefill == (backend.spec.prefill is not None)


@settings(max_examples=200, deadline=None)
@given(prefill=st.text(min_size=1, max_size=8), answer=st.text(max_size=8),
       echoed=st.booleans(), cuts=st.lists(st.integers(0, 16), max_size=4))
@example(prefill="abc", answer="ab", echoed=False, cuts=[1])  # began like the prefill
@example(prefill="abc", answer="", echoed=True, cuts=[1])  # the repeat, and nothing new
def test_an_echoed_prefill_is_stripped_from_the_answer_however_it_is_chunked(
        prefill: str, answer: str, echoed: bool, cuts: list) -> None:
    """llama-server repeats the prefill at the start of its answer (row prefill_echo): the
    stream and the whole answer carry only what follows it, and a server that does not repeat
    it loses nothing."""
    from types import SimpleNamespace

    from modelplug.backends.openai_compat import _ChatEventReader

    sent = (prefill + answer) if echoed else answer
    if not echoed and answer.startswith(prefill):
        return  # indistinguishable from a repeat; the backend takes it for one

    def read(sent: str, prefill: str) -> str:
        bounds = sorted({0, len(sent), *(c for c in cuts if c <= len(sent))})
        reader = _ChatEventReader("vllm", "m", False, prefill)
        text = ""
        for a, b in itertools.pairwise(bounds):
            delta = SimpleNamespace(content=sent[a:b], tool_calls=None, refusal=None,
                                    model_extra={})
            event = SimpleNamespace(model="m", id="x", usage=None, choices=[
                SimpleNamespace(index=0, delta=delta, finish_reason=None)])
            text += "".join(c.text for c in reader.feed(event))
        return text + reader.finish().text

    # As if the server had sent the answer alone (the text reading is otherwise unchanged).
    assert read(sent, prefill) == read(answer, "")

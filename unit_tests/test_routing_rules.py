"""modelplug.routing on generated inputs: the health table's rules hold for any sequence of
calls, outcomes and clock moves; the router's orders are permutations with the promised
spread and stability."""

from __future__ import annotations

from hypothesis import given, settings
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

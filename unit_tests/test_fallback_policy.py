"""modelplug.fallback: the policy itself, over plain Python callables (offline, no models)."""

from __future__ import annotations

import pytest

from modelplug import ChatRequest, FallbackExhaustedError, UnsupportedCapabilityError
from modelplug.errors import ConfigurationError
from modelplug.fallback import Candidate, FallbackPolicy, Needs, is_retryable
from modelplug.profile import Profile


def refuse() -> str:
    raise ConnectionRefusedError("refused")


def cands(*targets, profiles=None) -> list[Candidate]:
    profiles = profiles or [None] * len(targets)
    return [Candidate(f"c{i}", t, p) for i, (t, p) in enumerate(zip(targets, profiles,
                                                                     strict=True))]


def test_run_fails_over_on_transient_errors_only() -> None:
    policy = FallbackPolicy()
    outcome = policy.run(cands(refuse, lambda: "ok"), lambda f: f())
    assert (outcome.value, outcome.candidate.name) == ("ok", "c1")
    assert [n for n, _ in outcome.failures] == ["c0"]

    def bad() -> str:
        raise ValueError("bad request")

    with pytest.raises(ValueError, match="bad request") as info:
        policy.run(cands(refuse, bad, lambda: "never"), lambda f: f())
    assert "c0" in "".join(info.value.__notes__)  # what was tried before is told


def test_exhausted_carries_every_error_and_chains_the_last() -> None:
    def slow() -> str:
        raise TimeoutError("slow")

    with pytest.raises(FallbackExhaustedError) as info:
        FallbackPolicy().run(cands(refuse, slow), lambda f: f())
    assert [type(e) for e in info.value.exceptions] == [ConnectionRefusedError, TimeoutError]
    assert info.value.__cause__ is info.value.exceptions[-1]
    assert "c0: ConnectionRefusedError: refused" in str(info.value)
    assert is_retryable(info.value)


def test_retry_on_classes_and_predicates() -> None:
    def bad() -> str:
        raise KeyError("k")

    assert FallbackPolicy(retry_on=KeyError).run(cands(bad, lambda: 1), lambda f: f()).value == 1
    assert FallbackPolicy(retry_on=lambda e: True).run(cands(bad, lambda: 2),
                                                       lambda f: f()).value == 2
    with pytest.raises(ConnectionRefusedError):
        FallbackPolicy(retry_on=(TimeoutError,)).run(cands(refuse, lambda: 3), lambda f: f())
    with pytest.raises(TypeError, match="retry_on"):
        FallbackPolicy(retry_on=42)  # type: ignore[arg-type]


def test_interrupts_never_fail_over() -> None:
    def interrupt() -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        FallbackPolicy(retry_on=lambda e: True).run(cands(interrupt, lambda: 1), lambda f: f())


def test_stream_fails_over_only_before_the_first_item() -> None:
    def dies_at_once():
        raise ConnectionResetError("reset")
        yield "never"

    def dies_midway():
        yield "a"
        raise ConnectionResetError("reset")

    policy = FallbackPolicy()
    assert list(policy.stream(cands(dies_at_once, lambda: iter("xy")), lambda f: f())) == [
        "x", "y"]
    got = []
    with pytest.raises(ConnectionResetError):
        for item in policy.stream(cands(dies_midway, lambda: iter("xy")), lambda f: f()):
            got.append(item)
    assert got == ["a"]
    assert list(policy.stream(cands(lambda: iter(())), lambda f: f())) == []  # empty is an answer


async def test_async_runners() -> None:
    async def refuse_async() -> str:
        raise ConnectionRefusedError("refused")

    async def ok() -> str:
        return "ok"

    policy = FallbackPolicy()
    assert (await policy.arun(cands(refuse_async, ok), lambda f: f())).value == "ok"

    async def dies_midway():
        yield "a"
        raise ConnectionResetError("reset")

    async def fine():
        yield "x"

    got = []
    with pytest.raises(ConnectionResetError):
        async for item in policy.astream(cands(dies_midway, fine), lambda f: f()):
            got.append(item)
    assert got == ["a"]

    async def dies_at_once():
        raise ConnectionResetError("reset")
        yield "never"

    assert [i async for i in policy.astream(cands(dies_at_once, fine), lambda f: f())] == ["x"]


def test_needs_skip_candidates_that_lack_them() -> None:
    request = ChatRequest(
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "x" * 400},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    needs = Needs.of_request(request)
    assert needs.tools and needs.images and needs.input_tokens > 100
    assert "tool calling" in needs.unmet(Profile(tool_calling=False))
    assert "image" in needs.unmet({"image_inputs": False})
    assert "context window of 50" in needs.unmet({"max_input_tokens": 50})
    assert needs.unmet(Profile()) is None  # unknown capabilities are tried
    assert not Needs.of_request(ChatRequest(messages=request.messages, tools=request.tools,
                                            tool_choice="none")).tools

    calls = []
    outcome = FallbackPolicy().run(
        cands("small", "big", profiles=[{"max_input_tokens": 50}, {"max_input_tokens": 10**6}]),
        lambda name: calls.append(name) or name, needs=needs)
    assert outcome.value == "big" and calls == ["big"]
    assert isinstance(outcome.failures[0][1], UnsupportedCapabilityError)


def test_classification() -> None:
    class FakeStatus(Exception):
        def __init__(self, status_code: int) -> None:
            self.status_code = status_code

    class APIConnectionError(Exception):  # recognised by name, as SDK classes are
        pass

    assert is_retryable(FakeStatus(429)) and is_retryable(FakeStatus(502))
    assert not is_retryable(FakeStatus(400)) and not is_retryable(FakeStatus(401))
    assert is_retryable(APIConnectionError())
    assert is_retryable(UnsupportedCapabilityError("no tools"))  # another candidate may
    assert not is_retryable(ConfigurationError("bad model string"))
    assert not is_retryable(ValueError()) and not is_retryable(TypeError())

"""modelplug.fallback: the policy itself, over plain Python callables (offline, no models)."""

from __future__ import annotations

import base64
import os

import pytest

from modelplug import ChatRequest, FallbackExhaustedError, UnsupportedCapabilityError
from modelplug.backends.base import check_request
from modelplug.errors import ConfigurationError
from modelplug.fallback import (
    IMAGE_TOKENS,
    Candidate,
    FallbackPolicy,
    Needs,
    combine_profiles,
    is_retryable,
)
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


def test_retry_on_classes_match_sdk_errors_as_their_typed_error() -> None:
    class APIConnectionError(Exception):  # openai's: no ConnectionError, recognised by name
        pass

    class APITimeoutError(APIConnectionError):
        pass

    def down() -> str:
        raise APIConnectionError("Connection error.")

    def slow() -> str:
        raise APITimeoutError("Request timed out.")

    policy = FallbackPolicy(retry_on=(TimeoutError, ConnectionError))
    outcome = policy.run(cands(down, slow, lambda: "ok"), lambda f: f())
    assert outcome.value == "ok"
    assert [type(e) for _, e in outcome.failures] == [APIConnectionError, APITimeoutError]
    # Narrowed to timeouts, a refused connection still surfaces as itself.
    with pytest.raises(APIConnectionError):
        FallbackPolicy(retry_on=TimeoutError).run(cands(down, lambda: "never"), lambda f: f())


def _image_request(data_url: str) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this photo?"},
        {"type": "image_url", "image_url": {"url": data_url}}]}])


def test_an_image_counts_at_a_fixed_cost_not_by_its_base64() -> None:
    # A 300 KB photo: about 400,000 characters of base64, ~100k tokens if read as text.
    photo = "data:image/jpeg;base64," + base64.b64encode(os.urandom(300_000)).decode()
    needs = Needs.of_request(_image_request(photo))
    assert needs.images
    assert IMAGE_TOKENS <= needs.input_tokens < IMAGE_TOKENS + 50
    tiny = Needs.of_request(_image_request("data:image/png;base64,AAAA"))
    assert tiny.input_tokens == needs.input_tokens  # the size of the data URL does not count
    two = Needs.of_request(ChatRequest(messages=[_image_request(photo).messages[0]] * 2))
    assert two.input_tokens >= 2 * IMAGE_TOKENS  # each image part counts
    # The vision candidate (a 32k window, as Qwen2.5-VL-7B's) is tried, not skipped.
    calls = []
    outcome = FallbackPolicy().run(
        cands("text-only", "vision", profiles=[{"image_inputs": False},
                                               {"image_inputs": True, "max_input_tokens": 32_768}]),
        lambda name: calls.append(name) or name, needs=needs)
    assert outcome.value == "vision" and calls == ["vision"]
    assert "image" in str(outcome.failures[0][1])


def test_one_rule_for_what_a_set_can_do() -> None:
    fields = ("tool_calling", "image_inputs", "structured_output")
    mixed = [{"tool_calling": False, "image_inputs": True, "structured_output": True,
              "max_input_tokens": 8192},
             Profile(tool_calling=True, image_inputs=False, structured_output=False,
                     max_input_tokens=128_000)]
    # Skipped-for capabilities: any candidate's is the set's (the others are skipped);
    # the rest: every candidate must have it; limits: the smallest.
    assert combine_profiles(mixed, fields) == {
        "tool_calling": True, "image_inputs": True, "structured_output": False,
        "max_input_tokens": 8192}
    lacking = [{"tool_calling": False}, {"tool_calling": False}]
    assert combine_profiles(lacking, fields) == {"tool_calling": False}
    unknown = [{"tool_calling": False, "structured_output": True}, None]
    assert combine_profiles(unknown, fields) == {}  # unknown stays unknown


@pytest.mark.parametrize("request_", [
    ChatRequest(messages=[]),
    ChatRequest(messages=[{"role": "user", "content": "hi"}], response_format={"type": "xml"}),
    ChatRequest(messages=[{"role": "user", "content": "hi"}], response_format="json"),  # type: ignore[arg-type]
], ids=["no messages", "unknown response_format type", "response_format not a dict"])
def test_caller_errors_are_configuration_errors_that_do_not_fail_over(
        request_: ChatRequest) -> None:
    with pytest.raises(ConfigurationError) as info:
        check_request(request_)
    error = info.value
    assert not isinstance(error, UnsupportedCapabilityError) and not is_retryable(error)
    assert "Pass at least one message" in str(error) or "use 'json_schema' or 'json_object'" in \
        str(error)

    def refused() -> str:
        raise error

    calls = []
    with pytest.raises(ConfigurationError) as raised:
        FallbackPolicy().run(cands(refused, lambda: calls.append(1)), lambda f: f())
    assert raised.value is error and calls == []  # raised as itself; the next one never ran
    check_request(ChatRequest(messages=[{"role": "user", "content": "hi"}],
                              response_format={"type": "text"}))  # a known type passes

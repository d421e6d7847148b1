"""``modelplug serve``: the OpenAI-compatible server in front of the in-process SmolLM2 GGUF, run
by real uvicorn on loopback and called with the official openai SDK, ChatOpenAI and another
ChatModelPlug (as another machine's LangChain would)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fakes.server import LoopbackServer

from langchain_modelplug import ChatModelPlug
from modelplug import ChatRequest, create_backend
from modelplug.server import API_KEY_ENV, create_app

PARIS = "What is the capital of France? Answer in one sentence."
SERVED = "llamacpp:smollm2"
KEY = "serve-test-key"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": PARIS}]
GREEDY = {"temperature": 0, "max_tokens": 32}


@pytest.fixture(scope="module")
def backend():
    return create_backend(SERVED)


@pytest.fixture(scope="module")
def reference(backend) -> str:
    """The backend's own greedy answer, called directly: what the server must pass through."""
    return backend.chat(ChatRequest(ASK, **GREEDY)).text


@pytest.fixture(scope="module")
def url(backend) -> Iterator[str]:
    """A server that requires the API key ``KEY``."""
    server = LoopbackServer(create_app(backend, api_key=KEY)).start()
    yield f"{server.url}/v1"
    server.stop()


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [SERVED]
    assert models[0].owned_by == "llamacpp"
    assert client.models.retrieve(SERVED).id == SERVED
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ollama:other")


def test_chat_completion_passes_the_backends_answer_through(client, reference: str) -> None:
    completion = client.chat.completions.create(model=SERVED, messages=ASK, **GREEDY)
    choice = completion.choices[0]
    assert "Paris" in reference
    assert choice.message.content == reference
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.model == SERVED


def test_stream_yields_deltas_then_usage(client, reference: str) -> None:
    chunks = list(client.chat.completions.create(
        model=SERVED, messages=ASK, stream=True, stream_options={"include_usage": True},
        **GREEDY))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for d in deltas if d) > 2  # really streamed, not one blob
    assert "".join(deltas) == reference
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    assert not chunks[-1].choices  # the usage chunk, as OpenAI sends it
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens > 0


def test_usage_is_the_models_own_count_in_openai_format(client, backend) -> None:
    own = backend.chat(ChatRequest(ASK, **GREEDY)).usage  # the tokenizer's count, in-process
    completion = client.chat.completions.create(model=SERVED, messages=ASK, **GREEDY)
    streamed = list(client.chat.completions.create(
        model=SERVED, messages=ASK, stream=True, stream_options={"include_usage": True},
        **GREEDY))[-1]
    for usage in (completion.usage, streamed.usage):
        assert (usage.prompt_tokens, usage.completion_tokens) == (own.input_tokens,
                                                                  own.output_tokens)
        assert usage.total_tokens == own.total_tokens
        assert usage.prompt_tokens_details.cached_tokens == own.cache_read_tokens
        assert usage.prompt_tokens_details.audio_tokens == own.audio_input_tokens
        assert usage.completion_tokens_details.reasoning_tokens == own.reasoning_tokens
        assert usage.completion_tokens_details.audio_tokens == own.audio_output_tokens


def test_stream_wire_format_is_sse_ending_with_done(url: str) -> None:
    body = {"model": SERVED, "messages": ASK, "stream": True, **GREEDY}
    with httpx.stream("POST", f"{url}/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert len({e["id"] for e in events}) == 1
    assert all("usage" not in e for e in events)  # only sent when stream_options asks


def test_forced_tool_call_and_tool_result_round_trip(client: openai.OpenAI) -> None:
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    completion = client.chat.completions.create(
        model=SERVED, messages=question, tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0, max_tokens=48)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert "paris" in json.loads(call.function.arguments)["city"].lower()
    assert call.id

    # The tool's result goes back in OpenAI's shape: the assistant turn, then a tool message.
    follow_up = client.chat.completions.create(
        model=SERVED, tools=[WEATHER_TOOL], tool_choice="none", temperature=0, max_tokens=32,
        messages=[*question, choice.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C"}])
    assert follow_up.choices[0].message.content
    assert not follow_up.choices[0].message.tool_calls


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[WEATHER_TOOL], tool_choice="required", stream=True, temperature=0,
        max_tokens=48))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].id and deltas[0].function.name == "get_weather"
    arguments = json.loads("".join(d.function.arguments or "" for d in deltas))
    assert set(arguments) == {"city"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_structured_output_follows_the_schema(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    completion = client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "Name the capital of France."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "answer", "schema": schema}},
        temperature=0, max_tokens=32)
    assert set(json.loads(completion.choices[0].message.content)) == {"city"}


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_embeddings_match_the_backend(client, backend, encoding_format: str) -> None:
    texts = ["The cat sat on the mat.", "Paris is in France."]
    kwargs = {} if encoding_format == "base64" else {"encoding_format": "float"}
    result = client.embeddings.create(model=SERVED, input=texts, **kwargs)  # SDK default: base64
    assert [d.index for d in result.data] == [0, 1]
    direct = backend.embed(texts)
    for got, want in zip(result.data, direct, strict=True):
        assert len(got.embedding) == len(want) > 0
        assert got.embedding == pytest.approx(want, abs=1e-6)


def test_wrong_or_missing_api_key_is_refused(url: str) -> None:
    wrong = openai.OpenAI(base_url=url, api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.chat.completions.create(model=SERVED, messages=ASK, max_tokens=4)
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"
    response = httpx.get(f"{url}/models")  # no Authorization header at all
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_api_key_from_the_environment(backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    server = LoopbackServer(create_app(backend)).start()
    try:
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
        ok = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer from-env"})
        assert ok.status_code == 200
    finally:
        server.stop()
    open_server = LoopbackServer(create_app(backend, api_key="")).start()  # "" turns it off
    try:
        assert httpx.get(f"{open_server.url}/v1/models").status_code == 200
    finally:
        open_server.stop()


def test_bad_requests_get_openai_errors_with_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=SERVED, messages=[], max_tokens=4)
    assert info.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=SERVED, messages=ASK, n=2, max_tokens=4)
    # A capability the model lacks is refused with 400 before the stream starts.
    image = [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=SERVED, messages=image, stream=True, max_tokens=4)
    assert "image" in info.value.message


USER = {"role": "user", "content": "Hi"}
CALLED = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
UNRESOLVED = {"type": "object", "properties": {"city": {"$ref": "#/$defs/City"}}}
#: id -> (request fields, the error's param, the bad value its message must quote). Each goes
#: through the openai SDK (it sends what it is given), those in RAW as raw JSON with httpx.
BAD_REQUESTS: dict[str, tuple[dict[str, Any], str, str]] = {
    "unknown role": ({"messages": [USER, {"role": "wizard", "content": "Hi"}]},
                     "messages[1].role", "wizard"),
    "content a number": ({"messages": [{"role": "user", "content": 42}]},
                         "messages[0].content", "42"),
    "content part a string": ({"messages": [{"role": "user", "content": ["Hi"]}]},
                              "messages[0].content[0]", "Hi"),
    "content part of an unknown type": ({"messages": [{"role": "user", "content": [
        {"type": "hologram", "data": "..."}]}]}, "messages[0].content[0].type", "hologram"),
    "tool message without tool_call_id": (
        {"messages": [USER, CALLED, {"role": "tool", "content": "Sunny"}]},
        "messages[2].tool_call_id", "tool_call_id"),
    "max_tokens negative": ({"max_tokens": -5}, "max_tokens", "-5"),
    "max_tokens a string": ({"max_tokens": "ten"}, "max_tokens", "ten"),
    "max_completion_tokens zero": ({"max_completion_tokens": 0}, "max_completion_tokens", "0"),
    "temperature a string": ({"temperature": "hot"}, "temperature", "hot"),
    "temperature over 2": ({"temperature": 2.5}, "temperature", "2.5"),
    "top_p zero": ({"top_p": 0}, "top_p", "0"),
    "top_p over 1": ({"top_p": 1.5}, "top_p", "1.5"),
    "n of 3": ({"n": 3}, "n", "3"),
    "stop a number": ({"stop": 7}, "stop", "7"),
    "stop five strings": ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "5"),
    "seed a decimal": ({"seed": 1.5}, "seed", "1.5"),
    "stream a string": ({"stream": "yes"}, "stream", "yes"),
    "tool not an object": ({"tools": [42]}, "tools[0]", "42"),
    "tool without a name": ({"tools": [{"type": "function", "function": {
        "parameters": {"type": "object"}}}]}, "tools[0].function", "name"),
    "tool parameters not a schema": ({"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "strin"}}}}}]},
        "tools[0].function.parameters", "strin"),
    "tool_choice names no tool": ({"tools": [WEATHER_TOOL], "tool_choice": {
        "type": "function", "function": {"name": "get_time"}}}, "tool_choice.function.name",
        "get_time"),
    "tool_choice a bare name": ({"tools": [WEATHER_TOOL], "tool_choice": "get_weather"},
                                "tool_choice", "get_weather"),
    "unknown response_format": ({"response_format": {"type": "xml"}}, "response_format.type",
                                "xml"),
    "response_format schema invalid": ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "objekt"}}}}, "response_format.json_schema.schema",
        "objekt"),
    "response_format $ref unresolvable": ({"response_format": {"type": "json_schema",
                                                               "json_schema": {
        "name": "answer", "schema": UNRESOLVED}}}, "response_format.json_schema.schema",
        "#/$defs/City"),
}
RAW = {"stream a string"}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_a_400_naming_the_field(case: str, client: openai.OpenAI,
                                               url: str) -> None:
    fields, param, bad = BAD_REQUESTS[case]
    body = {"model": SERVED, "messages": ASK, "max_tokens": 4, **fields}
    if case in RAW:
        response = httpx.post(f"{url}/chat/completions", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {KEY}"})
        status, error = response.status_code, response.json()["error"]
    else:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(**body)
        status, error = info.value.status_code, info.value.body
    assert status == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert bad in error["message"]
    assert error["code"]


def test_the_server_answers_after_bad_requests(client: openai.OpenAI, url: str) -> None:
    for body in (b"{not json", b"[1, 2]"):  # also refused before any work
        response = httpx.post(f"{url}/chat/completions", content=body, timeout=30,
                              headers={"Authorization": f"Bearer {KEY}",
                                       "Content-Type": "application/json"})
        assert response.status_code == 400
    completion = client.chat.completions.create(model=SERVED, messages=ASK, max_tokens=4)
    assert completion.choices[0].message.content


def test_request_size_limit_is_checked_before_the_body_is_read(backend, url: str) -> None:
    """413 for a declared length over the limit and for a chunked body that outgrows it (bytes
    counted as they come); the body here is no JSON at all, so a 413 means it was not parsed."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = httpx.post(f"{url}/chat/completions", content=b"x" * (9 * 1024 * 1024),
                          headers=headers, timeout=60)  # over the default 8 MiB
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    server = LoopbackServer(create_app(backend, api_key="", max_request_bytes=10_000)).start()
    try:
        small = f"{server.url}/v1/chat/completions"
        response = httpx.post(small, content=b"x" * 10_001, headers=headers, timeout=30)
        assert response.status_code == 413
        assert "10,000 bytes" in response.json()["error"]["message"]
        chunked = httpx.post(small, content=iter([b"x" * 4_000] * 5), headers=headers,
                             timeout=30)
        assert "content-length" not in chunked.request.headers
        assert chunked.status_code == 413
        ok = httpx.post(small, json={"model": SERVED, "messages": ASK, "max_tokens": 4},
                        timeout=60)
        assert ok.status_code == 200
    finally:
        server.stop()


def test_health_needs_no_key(url: str, backend) -> None:
    health = httpx.get(url.removesuffix("/v1") + "/health", timeout=10)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["model"] == SERVED
    stats = backend.serving_stats()
    if stats is not None:  # an in-process model on its scheduler reports its load
        assert {"running", "waiting", "capacity"} <= set(body)


def test_a_full_queue_is_a_503() -> None:
    from modelplug.errors import ServerBusyError
    from modelplug.server import error_body

    status, body = error_body(ServerBusyError("12 requests are already waiting"))
    assert status == 503 and body["error"]["type"] == "server_error"


def test_concurrent_requests_take_turns_on_the_model(client, reference: str) -> None:
    answers: list[str] = []

    def ask() -> None:
        completion = client.chat.completions.create(model=SERVED, messages=ASK, **GREEDY)
        answers.append(completion.choices[0].message.content)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert answers == [reference, reference]


def test_another_machines_langchain(url: str, reference: str) -> None:
    """ChatModelPlug with an OpenAI-compatible provider, and langchain-openai's ChatOpenAI."""
    from langchain_openai import ChatOpenAI

    remote = ChatModelPlug(model=f"llamaserver:{SERVED}", base_url=url, api_key=KEY, **GREEDY)
    message = remote.invoke(PARIS)
    assert message.content == reference
    assert message.usage_metadata["output_tokens"] > 0
    assert "".join(c.content for c in remote.stream(PARIS)) == reference

    chat_openai = ChatOpenAI(model=SERVED, base_url=url, api_key=KEY, **GREEDY)
    assert chat_openai.invoke(PARIS).content == reference
    tooled = chat_openai.bind_tools([WEATHER_TOOL], tool_choice="get_weather")
    (call,) = tooled.invoke("What is the weather in Paris?").tool_calls
    assert call["name"] == "get_weather" and "city" in call["args"]

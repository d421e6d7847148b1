"""The wire fakes refuse what the real APIs refuse, in the real APIs' error shapes.

A fake that accepts anything proves nothing: each rule a fake enforces is shown here refusing a
request that breaks it, driven through the provider's official SDK so the refusal arrives as that
SDK's own error (``openai.BadRequestError``, ``anthropic.BadRequestError``,
``ollama.ResponseError``, ``google.genai.errors.ClientError``), and each fake is shown taking
the valid request next to it. Rules that hold for every conversation (a tool answer with no
call before it is refused, a well-formed tool round trip is taken) are checked on generated
message sequences with hypothesis.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from fakes import anthropic_api, gemini_api, openai_api
from fakes.ollama_api import FakeOllama
from fakes.server import LoopbackServer
from hypothesis import given, settings
from hypothesis import strategies as st

# -- OpenAI ---------------------------------------------------------------------------------------

USER = {"role": "user", "content": "Weather in Paris?"}
CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
ANSWER = {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def openai_fake() -> Iterator[openai_api.FakeOpenAI]:
    api = openai_api.FakeOpenAI()
    server = LoopbackServer(api.app).start()
    api.url = f"{server.url}/v1"  # type: ignore[attr-defined]
    yield api
    server.stop()


@pytest.fixture
def client(openai_fake: openai_api.FakeOpenAI) -> Iterator[openai.OpenAI]:
    openai_fake.extra_fields = frozenset()
    yield openai.OpenAI(base_url=openai_fake.url, api_key=openai_api.API_KEY,  # type: ignore[attr-defined]
                        max_retries=0)


#: Each request the API refuses: the create() arguments, then the error's param and code and a
#: piece of its message.
OPENAI_REFUSED: dict[str, tuple[dict[str, Any], str | None, str | None, str]] = {
    "no model": ({"model": openai.omit, "messages": [USER]}, None, None,
                 "you must provide a model parameter"),
    "no messages": ({"messages": openai.omit}, "messages", "missing_required_parameter",
                    "Missing required parameter: 'messages'"),
    "empty messages": ({"messages": []}, "messages", "empty_array", "empty array"),
    "unknown parameter": ({"extra_body": {"top_k": 5}}, None, None,
                          "Unrecognized request argument supplied: top_k"),
    "unknown role": ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role",
                     "invalid_value", "Invalid value: 'robot'"),
    "unknown message field": ({"messages": [{**USER, "id": "m1"}]}, "messages[0].id",
                              "unknown_parameter", "Unknown parameter"),
    "user message without content": ({"messages": [{"role": "user"}]}, "messages[0].content",
                                     "missing_required_parameter", "messages[0].content"),
    "tool message without tool_call_id": (
        {"messages": [USER, CALL, {"role": "tool", "content": "Sunny"}]},
        "messages[2].tool_call_id", "missing_required_parameter", "tool_call_id"),
    "orphan tool message": ({"messages": [USER, ANSWER]}, "messages.[1].role", None,
                            "must be a response to a preceeding message with 'tool_calls'"),
    "tool message after a user turn": (
        {"messages": [USER, CALL, ANSWER, USER, ANSWER]}, "messages.[4].role", None,
        "must be a response to a preceeding message with 'tool_calls'"),
    "tool message answering another id": (
        {"messages": [USER, CALL, {**ANSWER, "tool_call_id": "call_9"}]},
        "messages.[2].tool_call_id", None, "'call_9' not found in 'tool_calls'"),
    "tool call left unanswered": ({"messages": [USER, CALL, USER]}, "messages.[1].role", None,
                                  "did not have response messages: call_1"),
    "tool_choice without tools": ({"tool_choice": "auto"}, "tool_choice", None,
                                  "only allowed when 'tools' are specified"),
    "parallel_tool_calls without tools": ({"parallel_tool_calls": False},
                                          "parallel_tool_calls", None,
                                          "only allowed when 'tools' are specified"),
    "tool_choice naming an unbound tool": (
        {"tools": [WEATHER], "tool_choice": {"type": "function",
                                             "function": {"name": "get_time"}}},
        "tool_choice", None, "no function named 'get_time'"),
    "tool_choice an unknown mode": ({"tools": [WEATHER], "tool_choice": "any"}, "tool_choice",
                                    "invalid_value", "Invalid value: 'any'"),
    "tool without a name": ({"tools": [{"type": "function", "function": {}}]},
                            "tools[0].function.name", "missing_required_parameter", "name"),
    "stream_options without stream": ({"stream_options": {"include_usage": True}},
                                      "stream_options", None, "only allowed when 'stream'"),
}


@pytest.mark.parametrize("case", list(OPENAI_REFUSED))
def test_openai_fake_refuses_what_the_api_refuses(client: openai.OpenAI, case: str) -> None:
    arguments, param, code, message = OPENAI_REFUSED[case]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{"model": "gpt-4o-mini", "messages": [USER],
                                          **arguments})
    error = caught.value
    assert error.status_code == 400
    assert error.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert (error.body["param"], error.body["code"]) == (param, code)  # type: ignore[index]
    assert message in error.body["message"]  # type: ignore[index]


def test_openai_fake_takes_a_tool_round_trip(client: openai.OpenAI,
                                             openai_fake: openai_api.FakeOpenAI) -> None:
    openai_fake.reply({"content": "Sunny in Paris."})
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[USER, CALL, ANSWER], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False)
    assert answer.choices[0].message.content == "Sunny in Paris."


def test_openai_fake_takes_a_compatible_servers_own_parameters(
        client: openai.OpenAI, openai_fake: openai_api.FakeOpenAI) -> None:
    openai_fake.extra_fields = openai_api.COMPAT_FIELDS
    openai_fake.reply({"content": "ok"})
    answer = client.chat.completions.create(
        model="qwen3-8b", messages=[USER],
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, "top_k": 5})
    assert answer.choices[0].message.content == "ok"


@pytest.mark.parametrize("stream", [False, None])
def test_openai_fake_answers_one_json_body_unless_asked_to_stream(
        openai_fake: openai_api.FakeOpenAI, stream: bool | None) -> None:
    openai_fake.reply({"content": "one body"})
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [USER]}
    if stream is not None:
        body["stream"] = stream
    answer = httpx.post(f"{openai_fake.url}/chat/completions", json=body,  # type: ignore[attr-defined]
                        headers={"Authorization": f"Bearer {openai_api.API_KEY}"})
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["choices"][0]["message"]["content"] == "one body"


def test_openai_fake_streams_server_sent_events(client: openai.OpenAI,
                                                openai_fake: openai_api.FakeOpenAI) -> None:
    openai_fake.reply({"content": "streamed"})
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[USER], stream=True) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in response.iter_lines() if line.startswith("data: {"))
    assert text == "streamed"


def test_openai_fake_refuses_unknown_embedding_parameters(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: "
                                                     "truncate"):
        client.embeddings.create(model="text-embedding-3-small", input="hi",
                                 extra_body={"truncate": True})


def _tool_call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"}}


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Valid conversations: user and plain assistant turns, and assistant tool calls (1-3, ids
    unique) each followed by one tool answer per call, in any order."""
    messages: list[dict[str, Any]] = [USER]
    for n in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            ids = [f"call_{n}_{k}" for k in range(draw(st.integers(1, 3)))]
            messages.append({"role": "assistant", "content": None,
                             "tool_calls": [_tool_call(i) for i in ids]})
            messages += [{"role": "tool", "tool_call_id": i, "content": "ok"}
                         for i in draw(st.permutations(ids))]
        else:
            messages.append({"role": "assistant", "content": "sure"})
        messages.append(USER)
    return messages


@given(conversations())
def test_openai_fake_takes_every_well_formed_tool_conversation(
        messages: list[dict[str, Any]]) -> None:
    openai_api.check_chat({"model": "m", "messages": messages})


@given(conversations(), st.data())
def test_openai_fake_refuses_every_orphan_tool_message(messages: list[dict[str, Any]],
                                                       data: st.DataObject) -> None:
    """A tool message put anywhere but right after the calls it answers (and their other
    answers) is refused; one answering a call id never made is refused everywhere."""
    answerable = {i + 1 for i, m in enumerate(messages)
                  if m.get("tool_calls") or m["role"] == "tool"}
    where = data.draw(st.integers(0, len(messages)).filter(lambda i: i not in answerable))
    orphan = {"role": "tool", "tool_call_id": data.draw(st.sampled_from(["call_x", "call_0_0"])),
              "content": "ok"}
    with pytest.raises(openai_api.Refusal, match="role 'tool' must be a response"):
        openai_api.check_chat({"model": "m", "messages": [*messages[:where], orphan,
                                                           *messages[where:]]})
    if answerable:  # right after a call: refused all the same when it answers no call made
        where = data.draw(st.sampled_from(sorted(answerable)))
        stray = {**orphan, "tool_call_id": "call_never_made"}
        with pytest.raises(openai_api.Refusal, match="not found in 'tool_calls'"):
            openai_api.check_chat({"model": "m", "messages": [*messages[:where], stray,
                                                               *messages[where:]]})


# -- Anthropic ------------------------------------------------------------------------------------

TOOL_USE = {"role": "assistant", "content": [
    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]}
RESULT = {"role": "user", "content": [
    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"}]}
ASK = {"role": "user", "content": "Weather in Paris?"}
CLAUDE_TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}


@pytest.fixture(scope="module")
def claude() -> Iterator[tuple[anthropic_api.FakeAnthropic, anthropic.Anthropic]]:
    api = anthropic_api.FakeAnthropic()
    server = LoopbackServer(api.app).start()
    yield api, anthropic.Anthropic(base_url=server.url, api_key=anthropic_api.API_KEY,
                                   max_retries=0)
    server.stop()


ANTHROPIC_REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    # (a timeout of our own: the SDK derives its default one from max_tokens)
    "no max_tokens": ({"max_tokens": anthropic.omit, "timeout": 30},
                      "max_tokens: Field required"),
    "no model": ({"model": anthropic.omit}, "model: Field required"),
    "unknown field": ({"extra_body": {"n": 2}}, "n: Extra inputs are not permitted"),
    "system role in messages": ({"messages": [{"role": "system", "content": "be brief"}, ASK]},
                                "messages.0.role: Input should be 'user' or 'assistant'"),
    "orphan tool_result": ({"messages": [ASK, {"role": "assistant", "content": "Let me see."},
                                         RESULT]},
                           "unexpected `tool_use_id` found in `tool_result` blocks: toolu_1"),
    "tool_result two turns late": ({"messages": [ASK, TOOL_USE, {"role": "user",
                                                                 "content": "well?"},
                                                 {"role": "assistant", "content": "Hmm."},
                                                 RESULT]},
                                   "`tool_use` ids were found without `tool_result` blocks"),
    "tool_result after text": ({"messages": [ASK, TOOL_USE, {"role": "user", "content": [
        {"type": "text", "text": "here:"}, RESULT["content"][0]]}]},
        "`tool_result` blocks must come first"),
    "tool_choice naming an unbound tool": (
        {"tools": [CLAUDE_TOOL], "tool_choice": {"type": "tool", "name": "get_time"}},
        "no tool named 'get_time'"),
}


@pytest.mark.parametrize("case", list(ANTHROPIC_REFUSED))
def test_anthropic_fake_refuses_what_the_api_refuses(claude, case: str) -> None:
    _, client = claude
    arguments, message = ANTHROPIC_REFUSED[case]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(**{"model": "claude-sonnet-4-6", "max_tokens": 64,
                                  "messages": [ASK], **arguments})
    assert caught.value.status_code == 400
    body = caught.value.body
    assert body["type"] == "error"  # type: ignore[index]
    assert body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert message in body["error"]["message"]  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_fake_takes_a_tool_round_trip(claude, stream: bool) -> None:
    """Split turns of one role are one turn to the API: a tool result and a question sent as
    two user messages are taken like one."""
    fake, client = claude
    fake.reply([{"type": "text", "text": "Sunny."}])
    messages = [ASK, TOOL_USE, RESULT, {"role": "user", "content": "And tomorrow?"}]
    arguments = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": messages,
                 "tools": [CLAUDE_TOOL], "tool_choice": {"type": "tool", "name": "get_weather"}}
    if stream:
        with client.messages.stream(**arguments) as events:
            assert events.get_final_message().content[0].text == "Sunny."  # type: ignore[union-attr]
    else:
        assert client.messages.create(**arguments).content[0].text == "Sunny."  # type: ignore[union-attr]


@st.composite
def claude_conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Valid Messages API conversations: questions and answers, and tool_use turns (1-3 ids)
    each answered by a user turn that starts with one tool_result per id, in any order."""
    messages: list[dict[str, Any]] = [ASK]
    for n in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            ids = [f"toolu_{n}_{k}" for k in range(draw(st.integers(1, 3)))]
            messages.append({"role": "assistant", "content": [
                {"type": "tool_use", "id": i, "name": "get_weather", "input": {}} for i in ids]})
            results = [{"type": "tool_result", "tool_use_id": i, "content": "ok"}
                       for i in draw(st.permutations(ids))]
            messages.append({"role": "user", "content": results + draw(st.sampled_from(
                [[], [{"type": "text", "text": "and?"}]]))})
        else:
            messages += [{"role": "assistant", "content": "Sure."}, ASK]
    return messages


def _claude(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 8, "messages": messages}


@given(claude_conversations(), st.data())
def test_anthropic_fake_takes_tool_turns_and_refuses_every_stray_result(
        messages: list[dict[str, Any]], data: st.DataObject) -> None:
    assert anthropic_api.validate(_claude(messages)) is None
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    where = data.draw(st.sampled_from(users))
    stray = {"type": "tool_result", "tool_use_id": "toolu_never_used", "content": "ok"}
    content = messages[where]["content"]
    blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
    results = [b for b in blocks if b["type"] == "tool_result"]
    changed = [*messages[:where],
               {"role": "user", "content": [*results, stray, *blocks[len(results):]]},
               *messages[where + 1:]]
    assert "unexpected `tool_use_id`" in (anthropic_api.validate(_claude(changed)) or "")


# -- Ollama ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ollama_fake() -> Iterator[tuple[FakeOllama, ollama.Client]]:
    api = FakeOllama()
    server = LoopbackServer(api.app).start()
    yield api, ollama.Client(host=server.url)
    server.stop()


OLLAMA_REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "tools on a model without tools": (
        {"model": "llava:7b", "tools": [WEATHER]}, '"llava:7b" does not support tools'),
    "think on a model without thinking": ({"model": "llava:7b", "think": True},
                                          '"llava:7b" does not support thinking'),
    "chat with an embedding model": ({"model": "nomic-embed-text:latest"},
                                     '"nomic-embed-text:latest" does not support chat'),
}


@pytest.mark.parametrize("case", list(OLLAMA_REFUSED))
def test_ollama_fake_refuses_what_ollama_refuses(ollama_fake, case: str) -> None:
    _, client = ollama_fake
    arguments, message = OLLAMA_REFUSED[case]
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(**{"model": "qwen3:8b", "messages": [USER], "stream": False, **arguments})
    assert (caught.value.status_code, caught.value.error) == (400, message)


@pytest.mark.parametrize(("fields", "message"), [
    ({"model": ""}, "model is required"),
    ({"format": "yaml"}, 'invalid format: expected "json" or a valid JSON schema'),
])
def test_ollama_fake_refuses_what_the_sdk_will_not_send(ollama_fake, fields: dict[str, Any],
                                                        message: str) -> None:
    """The SDK checks these itself; another client might send them, and Ollama refuses them."""
    _, client = ollama_fake
    answer = httpx.post(client._client.base_url.join("/api/chat"),
                        json={"model": "qwen3:8b", "messages": [USER], **fields})
    assert (answer.status_code, answer.json()) == (400, {"error": message})


def test_ollama_fake_generate_answers_one_object_when_not_streaming(ollama_fake) -> None:
    fake, client = ollama_fake
    fake.reply("Paris is the capital.")
    answer = client.generate(model="qwen3:8b", prompt="Capital of France?", stream=False)
    assert answer.response == "Paris is the capital." and answer.done
    fake.reply("Paris.")
    assert "".join(p.response for p in client.generate(model="qwen3:8b", prompt="q",
                                                       stream=True)) == "Paris."


def test_ollama_fake_takes_tools_and_thinking_where_the_model_has_them(ollama_fake) -> None:
    fake, client = ollama_fake
    fake.reply("Sunny.", thinking="Look it up.")
    answer = client.chat(model="qwen3:8b", messages=[USER], tools=[WEATHER], think=True,
                         format={"type": "object"}, stream=False)
    assert answer.message.content == "Sunny." and answer.message.thinking == "Look it up."


# -- Gemini ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gemini_url() -> Iterator[str]:
    server = LoopbackServer(gemini_api.FakeGemini().app).start()
    yield server.url
    server.stop()


def _gemini(url: str, **http_options: Any):
    from google import genai

    return genai.Client(api_key=gemini_api.API_KEY,
                        http_options={"base_url": url, "retry_options": {"attempts": 1},
                                      **http_options})


GEMINI_REFUSED: dict[str, tuple[dict[str, Any], Any, str]] = {
    "unknown field": ({"extra_body": {"candidates": 2}}, "a cat",
                      'Unknown name "candidates": Cannot find field'),
    "unknown generation field": ({"extra_body": {"generationConfig": {"numImages": 2}}},
                                 "a cat", 'Unknown name "numImages" at \'generation_config\''),
    "role other than user and model": ({}, [{"role": "system", "parts": [{"text": "a cat"}]}],
                                       "Please use a valid role: user, model."),
    "content without parts": ({}, [{"role": "user", "parts": []}],
                              "contents.parts must not be empty"),
}


@pytest.mark.parametrize("case", list(GEMINI_REFUSED))
def test_gemini_fake_refuses_what_the_api_refuses(gemini_url: str, case: str) -> None:
    from google.genai import errors

    http_options, contents, message = GEMINI_REFUSED[case]
    client = _gemini(gemini_url, **http_options)  # held: a dropped client closes its session
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash-image", contents=contents)
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    assert message in caught.value.message  # type: ignore[operator]


def test_gemini_fake_refuses_a_request_without_contents(gemini_url: str) -> None:
    """The SDK will not send one: a raw request, as any other client might."""
    answer = httpx.post(f"{gemini_url}/v1beta/models/gemini-2.5-flash-image:generateContent",
                        json={"generationConfig": {"responseModalities": ["IMAGE"]}},
                        headers={"x-goog-api-key": gemini_api.API_KEY})
    assert answer.status_code == 400
    assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "contents is not specified" in answer.json()["error"]["message"]


def test_gemini_fake_takes_snake_and_camel_case_fields(gemini_url: str) -> None:
    answer = httpx.post(f"{gemini_url}/v1beta/models/gemini-2.5-flash-image:generateContent",
                        json={"contents": [{"role": "user", "parts": [{"text": "a cat"}]}],
                              "generation_config": {"response_modalities": ["IMAGE"]},
                              "systemInstruction": {"parts": [{"text": "draw"}]}},
                        headers={"x-goog-api-key": gemini_api.API_KEY})
    assert answer.status_code == 200, answer.text
    assert answer.json()["candidates"][0]["content"]["parts"][0]["inlineData"]


@settings(max_examples=50)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
    lambda name: name != "contents"))
def test_gemini_fake_refuses_every_undocumented_top_level_field(name: str) -> None:
    body = {"contents": [{"parts": [{"text": "x"}]}], name: {}}
    known = gemini_api._camel(name) in gemini_api.REQUEST_FIELDS
    assert (gemini_api.check(body) is None) == known

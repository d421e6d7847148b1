"""What no local server shows, at the wire: ChatModelPlug -> OpenAICompatBackend -> the official
openai SDK -> a loopback fake of OpenAI's API (integration_tests/fakes/openai_api.py).

o-series parameter rewriting, reasoning_content and <think> streams, usage details (cached and
reasoning tokens), tool-call deltas, API keys (missing, from the environment, never sent to a
local server) and the SDK's own retries.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakes.openai_api import API_KEY, FakeOpenAI, usage_block
from fakes.server import LoopbackServer
from langchain_core.messages import AIMessageChunk
from pydantic import BaseModel

from langchain_modelplug import ChatModelPlug
from modelplug import ConfigurationError, create_backend


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    api = FakeOpenAI()
    server = LoopbackServer(api.app).start()
    api.base_url = f"{server.url}/v1"  # type: ignore[attr-defined]
    yield api
    server.stop()


def _llm(fake: FakeOpenAI, model: str, **kwargs) -> ChatModelPlug:
    kwargs.setdefault("api_key", API_KEY)
    return ChatModelPlug(model=model, base_url=fake.base_url, **kwargs)  # type: ignore[attr-defined]


def _stream(llm, prompt: str = "hi", **kwargs) -> tuple[AIMessageChunk, list[AIMessageChunk]]:
    chunks = list(llm.stream(prompt, **kwargs))
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full, chunks


# -- OpenAI o-series: max_tokens -> max_completion_tokens, temperature forced to 1 ---------------

@pytest.mark.parametrize("model", ["o1", "o3", "o3-mini", "o4-mini"])
def test_o_series_parameters_are_rewritten(fake: FakeOpenAI, model: str) -> None:
    fake.reply({"content": "4"}, usage=usage_block(prompt=20, completion=150, cached=8,
                                                   reasoning=140))
    msg = _llm(fake, f"openai:{model}", max_tokens=300, temperature=0.2).invoke("2+2?")
    sent = fake.requests[-1]
    assert sent["max_completion_tokens"] == 300
    assert "max_tokens" not in sent
    assert sent["temperature"] == 1
    assert msg.content == "4"
    assert msg.usage_metadata["input_tokens"] == 20
    assert msg.usage_metadata["output_tokens"] == 150
    assert msg.usage_metadata["input_token_details"]["cache_read"] == 8
    assert msg.usage_metadata["output_token_details"]["reasoning"] == 140


def test_o_series_rewrite_applies_to_streams_and_async(fake: FakeOpenAI) -> None:
    import asyncio

    fake.reply_stream([{"content": "fo"}, {"content": "ur"}])
    full, _ = _stream(_llm(fake, "openai:o4-mini", max_tokens=64, temperature=0.0))
    assert full.content == "four"
    fake.reply({"content": "four"})
    msg = asyncio.run(_llm(fake, "openai:o4-mini", max_tokens=64).ainvoke("2+2?"))
    assert msg.content == "four"
    for sent in fake.requests:
        assert sent["max_completion_tokens"] == 64 and "max_tokens" not in sent
        assert sent["temperature"] == 1


def test_other_openai_models_keep_max_tokens_and_temperature(fake: FakeOpenAI) -> None:
    fake.reply({"content": "4"})
    _llm(fake, "openai:gpt-4o", max_tokens=300, temperature=0.2).invoke("2+2?")
    sent = fake.requests[-1]
    assert sent["max_tokens"] == 300 and sent["temperature"] == 0.2
    assert "max_completion_tokens" not in sent


# -- reasoning -----------------------------------------------------------------------------------

def test_reasoning_content_stream(fake: FakeOpenAI) -> None:
    # DeepSeek / vLLM (with a reasoning parser) stream reasoning in its own delta field.
    fake.reply_stream([{"reasoning_content": "The user"}, {"reasoning_content": " wants 4."},
                       {"content": "It is "}, {"content": "4."}],
                      usage=usage_block(prompt=9, completion=11, reasoning=5))
    full, chunks = _stream(_llm(fake, "vllm:deepseek-r1"))
    assert full.content == "It is 4."
    assert full.additional_kwargs["reasoning_content"] == "The user wants 4."
    assert any(c.additional_kwargs.get("reasoning_content") == "The user" for c in chunks)
    assert full.usage_metadata["output_token_details"]["reasoning"] == 5
    assert fake.requests[-1]["stream_options"] == {"include_usage": True}


def test_reasoning_field_non_streamed(fake: FakeOpenAI) -> None:
    # OpenRouter and Ollama's /v1 name the field "reasoning".
    fake.reply({"content": "Paris.", "reasoning": "France's capital is Paris."})
    msg = _llm(fake, "ollama-openai:qwen3:8b").invoke("Capital of France?")
    assert msg.content == "Paris."
    assert msg.additional_kwargs["reasoning_content"] == "France's capital is Paris."


def test_think_tags_split_across_chunks(fake: FakeOpenAI) -> None:
    fake.reply_stream([{"content": "<th"}, {"content": "ink>\nSome "}, {"content": "thought</"},
                       {"content": "think>\n\nThe ans"}, {"content": "wer."}])
    full, chunks = _stream(_llm(fake, "lmstudio:qwen3-8b"))
    assert full.content == "The answer."
    assert full.additional_kwargs["reasoning_content"] == "Some thought"
    assert all("<" not in c.content for c in chunks)


def test_think_tags_in_non_streamed_answer(fake: FakeOpenAI) -> None:
    fake.reply({"content": "<think>\nSome thought\n</think>\n\nThe answer."})
    msg = _llm(fake, "sglang:qwen3-8b").invoke("q")
    assert msg.content == "The answer."
    assert msg.additional_kwargs["reasoning_content"] == "Some thought"


def test_template_opened_think_stream(fake: FakeOpenAI) -> None:
    # DeepSeek-R1 style templates end the prompt with "<think>\n": the output starts inside the
    # thinking and only closes it. ";thinking" declares the ad-hoc model a thinking model.
    fake.reply_stream([{"content": "Let me "}, {"content": "see.</th"}, {"content": "ink>\n"},
                       {"content": "Yes."}])
    full, _ = _stream(_llm(fake, "hf-openai:deepseek-r1-distill;thinking"))
    assert full.content == "Yes."
    assert full.additional_kwargs["reasoning_content"] == "Let me see."


def test_reasoning_switch_reaches_local_server_template(fake: FakeOpenAI) -> None:
    fake.reply({"content": "ok"})
    _llm(fake, "vllm:qwen3-8b", reasoning=False).invoke("q")
    assert fake.requests[-1]["chat_template_kwargs"] == {"enable_thinking": False}


# -- tools, structured output, request fields ----------------------------------------------------

class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str


def test_streamed_tool_call_deltas_assemble(fake: FakeOpenAI) -> None:
    fake.reply_stream([
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                         "function": {"name": "GetWeather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]},
    ], finish_reason="tool_calls")
    llm = _llm(fake, "openai:gpt-4o").bind_tools([GetWeather], tool_choice="GetWeather")
    full, _ = _stream(llm, "Weather in Paris?")
    assert full.tool_calls == [{"name": "GetWeather", "args": {"city": "Paris"},
                                "id": "call_1", "type": "tool_call"}]
    assert full.response_metadata["finish_reason"] == "tool_calls"
    sent = fake.requests[-1]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "GetWeather"}}
    assert sent["tools"][0]["function"]["name"] == "GetWeather"


def test_non_streamed_tool_calls_parse(fake: FakeOpenAI) -> None:
    fake.reply({"content": None, "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "GetWeather", "arguments": '{"city": "Rome"}'}},
        {"id": "call_b", "type": "function",
         "function": {"name": "GetWeather", "arguments": '{"city": '}},
    ]}, finish_reason="tool_calls")
    msg = _llm(fake, "openai:gpt-4o").bind_tools([GetWeather], tool_choice="any").invoke("q")
    assert msg.tool_calls == [{"name": "GetWeather", "args": {"city": "Rome"}, "id": "call_a",
                               "type": "tool_call"}]
    assert msg.invalid_tool_calls[0]["id"] == "call_b"  # bad JSON is reported, not dropped
    assert fake.requests[-1]["tool_choice"] == "required"


def test_structured_output_json_schema_request(fake: FakeOpenAI) -> None:
    fake.reply({"content": '{"city": "Oslo"}'})
    result = _llm(fake, "openai:gpt-4o").with_structured_output(
        GetWeather, method="json_schema").invoke("q")
    assert result == GetWeather(city="Oslo")
    rf = fake.requests[-1]["response_format"]
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["schema"]["properties"]["city"]["type"] == "string"


def test_sampling_params_and_extra_body(fake: FakeOpenAI) -> None:
    fake.reply({"content": "x"})
    llm = _llm(fake, "together:meta-llama/Llama-3-8b", temperature=0.3, top_p=0.9, seed=7,
               stop=["\n"], model_kwargs={"top_k": 20, "repetition_penalty": 1.1})
    llm.invoke("q", logit_bias={"50256": -100})
    sent = fake.requests[-1]
    assert sent["model"] == "meta-llama/Llama-3-8b"
    assert (sent["temperature"], sent["top_p"], sent["seed"], sent["stop"]) == (0.3, 0.9, 7,
                                                                                ["\n"])
    assert sent["top_k"] == 20 and sent["repetition_penalty"] == 1.1
    assert sent["logit_bias"] == {"50256": -100}


# -- API keys and the SDK's own retries ----------------------------------------------------------

@pytest.mark.parametrize(("model", "env"), [("openai:gpt-4o", "OPENAI_API_KEY"),
                                            ("gemini:gemini-2.5-flash", "GOOGLE_API_KEY"),
                                            ("groq:llama-3.3-70b", "GROQ_API_KEY")])
def test_cloud_missing_key_fails_before_any_request(fake: FakeOpenAI, monkeypatch, model: str,
                                                    env: str) -> None:
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(ConfigurationError, match=env):
        ChatModelPlug(model=model, base_url=fake.base_url)  # type: ignore[attr-defined]
    assert fake.requests == []


def test_key_from_environment_is_sent(fake: FakeOpenAI, monkeypatch) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", API_KEY)
    fake.reply({"content": "ok"})
    llm = ChatModelPlug(model="deepseek:deepseek-chat", base_url=fake.base_url)  # type: ignore[attr-defined]
    assert llm.invoke("q").content == "ok"
    assert fake.headers[-1]["authorization"] == f"Bearer {API_KEY}"


def test_wrong_key_is_an_authentication_error_without_the_secret(fake: FakeOpenAI) -> None:
    import openai

    from modelplug import AuthenticationError

    llm = _llm(fake, "openai:gpt-4o", api_key="sk-wrong-secret")
    assert "sk-wrong-secret" not in repr(llm)
    with pytest.raises(AuthenticationError, match="HTTP 401: Incorrect API key") as info:
        llm.invoke("q")
    assert isinstance(info.value.__cause__, openai.AuthenticationError)  # the SDK's, chained
    assert not info.value.retryable and "sk-wrong-secret" not in str(info.value)


def test_local_server_never_gets_the_openai_key(fake: FakeOpenAI, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-key")
    fake.api_key = "modelplug-local"
    fake.reply({"content": "ok"})
    llm = ChatModelPlug(model="lmstudio:any-model", base_url=fake.base_url)  # type: ignore[attr-defined]
    assert llm.invoke("q").content == "ok"
    assert "sk-real-openai-key" not in fake.headers[-1]["authorization"]


def test_max_retries_is_the_sdks_retry(fake: FakeOpenAI) -> None:
    fake.fail(503, times=2)
    fake.reply({"content": "third time"})
    assert _llm(fake, "openai:gpt-4o", max_retries=2).invoke("q").content == "third time"
    assert len(fake.requests) == 3


def test_max_retries_zero_means_one_request(fake: FakeOpenAI) -> None:
    from modelplug import ProviderUnavailableError

    fake.fail(503)
    with pytest.raises(ProviderUnavailableError, match="HTTP 503"):
        _llm(fake, "openai:gpt-4o", max_retries=0).invoke("q")
    assert len(fake.requests) == 1


def test_timeout_and_retries_reach_the_sdk_client(fake: FakeOpenAI) -> None:
    backend = create_backend("vllm:m", base_url=fake.base_url, timeout=12.5,  # type: ignore[attr-defined]
                             max_retries=4, default_headers={"X-Team": "a"})
    client = backend.client
    assert (client.timeout, client.max_retries) == (12.5, 4)
    fake.reply({"content": "ok"})
    _llm(fake, "vllm:m", default_headers={"X-Team": "a"}).invoke("q")
    assert fake.headers[-1]["x-team"] == "a"

"""What no local server shows, at the wire: ChatModelPlug -> OpenAICompatBackend -> the official
openai SDK -> a loopback fake of OpenAI's API (integration_tests/fakes/openai_api.py).

o-series parameter rewriting, reasoning_content and <think> streams (incremental for thinking
models, split the same way whole or streamed), usage details (cached and reasoning tokens),
tool-call deltas and tool_choice spellings, catalog embedding models (openai, gemini) through
ModelPlugEmbeddings, API keys (missing, from the environment, never sent to a local server) and
the SDK's own retries.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakes.openai_api import API_KEY, COMPAT_FIELDS, FakeOpenAI, embedding_of, usage_block
from fakes.server import LoopbackServer
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from pydantic import BaseModel

from langchain_modelplug import ChatModelPlug, ModelPlugEmbeddings
from modelplug import ChatRequest, ConfigurationError, UnsupportedCapabilityError, create_backend


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


def test_template_opened_think_whole_answer_splits_like_the_stream(fake: FakeOpenAI) -> None:
    fake.reply({"content": "Let me see.</think>\nYes."})
    msg = _llm(fake, "hf-openai:deepseek-r1-distill;thinking").invoke("q")
    assert (msg.content, msg.additional_kwargs["reasoning_content"]) == ("Yes.", "Let me see.")


def test_unflagged_closing_tag_splits_the_same_whole_and_streamed(fake: FakeOpenAI) -> None:
    # Without ';thinking' nothing says the template opened <think>: the text streams at once, so
    # a lone </think> cannot make what came before it reasoning, and a whole answer follows the
    # same rule (declare the model ';thinking' to split it).
    answer = "Let me see.</think>\nYes."
    fake.reply({"content": answer})
    whole = _llm(fake, "hf-openai:deepseek-r1-distill").invoke("q")
    fake.reply_stream([{"content": answer[i:i + 4]} for i in range(0, len(answer), 4)])
    streamed, _ = _stream(_llm(fake, "hf-openai:deepseek-r1-distill"))
    assert whole.content == streamed.content
    assert whole.additional_kwargs == streamed.additional_kwargs


WORDS = ["The ", "answer ", "is ", "four, ", "as ", "two ", "plus ", "two ", "is ", "four."]


@pytest.mark.parametrize("model", ["openai:o4-mini", "openai:o3", "gemini:gemini-2.5-flash",
                                   "vllm:Qwen/Qwen3-8B"])
def test_thinking_models_stream_text_as_it_arrives(fake: FakeOpenAI, model: str) -> None:
    # Catalog thinking models never start inside a template-opened <think> (o-series hide their
    # reasoning, Qwen3 writes its own tags): nothing is held back for a tag that cannot come.
    fake.reply_stream([{"content": word} for word in WORDS])
    full, chunks = _stream(_llm(fake, model))
    assert full.content == "".join(WORDS)
    before_end = [c.content for c in chunks if c.content and c.chunk_position != "last"]
    assert before_end == WORDS  # one chunk per delta, none saved for the end


def test_template_opened_thinking_streams_text_once_the_server_splits_reasoning(
        fake: FakeOpenAI) -> None:
    # A ';thinking' model may start inside <think>, but a server with a reasoning parser sends
    # the reasoning in its own field: from then on the text is text and streams.
    fake.reply_stream([{"reasoning_content": "Two plus two."}, *({"content": w} for w in WORDS)])
    full, chunks = _stream(_llm(fake, "vllm:deepseek-r1;thinking"))
    assert (full.content, full.additional_kwargs["reasoning_content"]) == ("".join(WORDS),
                                                                            "Two plus two.")
    assert [c.content for c in chunks if c.content and c.chunk_position != "last"] == WORDS
    fake.reply({"content": "".join(WORDS), "reasoning_content": "Two plus two."})
    msg = _llm(fake, "vllm:deepseek-r1;thinking").invoke("q")
    assert (msg.content, msg.additional_kwargs) == (full.content, full.additional_kwargs)


def test_reasoning_switch_reaches_local_server_template(fake: FakeOpenAI) -> None:
    fake.extra_fields = COMPAT_FIELDS  # a vLLM server takes chat_template_kwargs
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


class GetTime(BaseModel):
    """Get the local time in a city."""

    city: str


def _request(tool_choice: str) -> ChatRequest:
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return ChatRequest(messages=[{"role": "user", "content": "q"}], tool_choice=tool_choice,
                       tools=[convert_to_openai_tool(GetWeather), convert_to_openai_tool(GetTime)])


@pytest.mark.parametrize(("choice", "wire"), [
    ("auto", "auto"), ("none", "none"), ("required", "required"), ("any", "required"),
    ("GetTime", {"type": "function", "function": {"name": "GetTime"}}),
])
def test_tool_choice_on_the_wire(fake: FakeOpenAI, choice: str, wire) -> None:
    fake.reply({"content": "ok"})
    create_backend("openai:gpt-4o", base_url=fake.base_url, api_key=API_KEY).chat(  # type: ignore[attr-defined]
        _request(choice))
    sent = fake.requests[-1]
    assert sent["tool_choice"] == wire
    assert [t["function"]["name"] for t in sent["tools"]] == ["GetWeather", "GetTime"]


def test_parallel_tool_calls_is_a_request_field_of_both_adapters(fake: FakeOpenAI) -> None:
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.modelplug import ModelPlug

    fake.reply({"content": "ok"})
    _llm(fake, "openai:gpt-4o").bind_tools([GetWeather], parallel_tool_calls=False).invoke("q")
    assert fake.requests[-1]["parallel_tool_calls"] is False

    def get_time(city: str) -> str:
        """Get the local time in a city."""
        return "12:00"

    llm = ModelPlug(model="openai:gpt-4o", base_url=fake.base_url, api_key=API_KEY)  # type: ignore[attr-defined]
    for allow in (False, True):  # LlamaIndex's default is one call per answer
        fake.reply({"content": "ok"})
        llm.chat_with_tools([FunctionTool.from_defaults(fn=get_time)], user_msg="q",
                            allow_parallel_tool_calls=allow)
        assert fake.requests[-1]["parallel_tool_calls"] is allow
    fake.reply({"content": "ok"})
    llm.complete("q")  # no tools: no parallel_tool_calls
    assert "parallel_tool_calls" not in fake.requests[-1]


def test_llamaserver_named_tool_choice_is_required_over_that_tool(fake: FakeOpenAI) -> None:
    # llama-server reads tool_choice only as a string; an object would quietly become "auto".
    fake.api_key = "modelplug-local"
    fake.reply({"content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "GetTime", "arguments": '{"city": "Oslo"}'}}]},
        finish_reason="tool_calls")
    llm = ChatModelPlug(model="llamaserver:m", base_url=fake.base_url)  # type: ignore[attr-defined]
    msg = llm.bind_tools([GetWeather, GetTime], tool_choice="GetTime").invoke("Time in Oslo?")
    sent = fake.requests[-1]
    assert sent["tool_choice"] == "required"
    assert [t["function"]["name"] for t in sent["tools"]] == ["GetTime"]
    assert msg.tool_calls[0]["name"] == "GetTime"

    backend = create_backend("llamaserver:m", base_url=fake.base_url)  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match=r"names no tool.*'GetWeather', 'GetTime'"):
        backend.chat(_request("GetDate"))
    assert len(fake.requests) == 1  # refused before sending


def test_signed_thinking_blocks_stay_out_of_openai_requests(fake: FakeOpenAI) -> None:
    # An Anthropic answer's history (e.g. after a fallback) carries Anthropic-signed thinking.
    fake.reply({"content": "ok"})
    signed = [{"type": "thinking", "thinking": "t", "signature": "s"}]
    _llm(fake, "openai:gpt-4o").invoke([
        HumanMessage("q"),
        AIMessage("", tool_calls=[{"name": "GetWeather", "args": {"city": "Oslo"}, "id": "c1"}],
                  additional_kwargs={"thinking_blocks": signed, "reasoning_content": "t"}),
        ToolMessage("rain", tool_call_id="c1")])
    sent = fake.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert all("thinking_blocks" not in m and "reasoning_content" not in m for m in sent)


def test_structured_output_json_schema_request(fake: FakeOpenAI) -> None:
    fake.reply({"content": '{"city": "Oslo"}'})
    result = _llm(fake, "openai:gpt-4o").with_structured_output(
        GetWeather, method="json_schema").invoke("q")
    assert result == GetWeather(city="Oslo")
    rf = fake.requests[-1]["response_format"]
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["schema"]["properties"]["city"]["type"] == "string"


def test_sampling_params_and_extra_body(fake: FakeOpenAI) -> None:
    fake.extra_fields = COMPAT_FIELDS  # Together documents top_k and repetition_penalty
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


# -- embeddings ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "env", "default_url"), [
    ("openai:text-embedding-3-small", "OPENAI_API_KEY", "https://api.openai.com/v1/"),
    ("openai:text-embedding-3-large", "OPENAI_API_KEY", "https://api.openai.com/v1/"),
    ("openai:text-embedding-ada-002", "OPENAI_API_KEY", "https://api.openai.com/v1/"),
    ("gemini:text-embedding-004", "GOOGLE_API_KEY",
     "https://generativelanguage.googleapis.com/v1beta/openai/"),
    ("gemini:gemini-embedding-001", "GOOGLE_API_KEY",
     "https://generativelanguage.googleapis.com/v1beta/openai/"),
])
async def test_catalog_embedding_models_reach_the_embeddings_endpoint(
        fake: FakeOpenAI, monkeypatch, model: str, env: str, default_url: str) -> None:
    monkeypatch.setenv(env, API_KEY)
    # Without base_url the provider's own endpoint (the client is built; nothing is sent).
    assert str(ModelPlugEmbeddings(model=model).backend.client.base_url) == default_url

    embeddings = ModelPlugEmbeddings(model=model, base_url=fake.base_url, batch_size=2)  # type: ignore[attr-defined]
    texts = ["Paris is in France.", "Rome", "Oslo is in Norway."]
    assert embeddings.embed_documents(texts) == [embedding_of(t) for t in texts]
    assert embeddings.embed_query("Rome") == embedding_of("Rome")
    assert await embeddings.aembed_documents(texts[:1]) == [embedding_of(texts[0])]
    assert await embeddings.aembed_query("Oslo") == embedding_of("Oslo")

    assert fake.paths == ["/v1/embeddings"] * 5
    assert [r["input"] for r in fake.requests] == [texts[:2], texts[2:], ["Rome"], texts[:1],
                                                   ["Oslo"]]
    model_id = model.partition(":")[2]
    assert all(r["model"] == model_id and r["encoding_format"] == "float"
               for r in fake.requests)
    assert fake.headers[-1]["authorization"] == f"Bearer {API_KEY}"


def test_embedding_and_chat_models_are_not_swapped(fake: FakeOpenAI) -> None:
    chat = _llm(fake, "openai:text-embedding-3-small")
    with pytest.raises(UnsupportedCapabilityError, match="embedding model and has no chat"):
        chat.invoke("q")
    with pytest.raises(UnsupportedCapabilityError, match="text-embedding-3-small"):
        ModelPlugEmbeddings(model="openai:gpt-4o", api_key=API_KEY,
                            base_url=fake.base_url).embed_query("q")  # type: ignore[attr-defined]
    assert fake.requests == []


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


def test_one_model_from_event_loops_one_after_another(fake: FakeOpenAI) -> None:
    # An async connection pool belongs to the loop that opened it: each loop gets its own client,
    # and a closed loop's client is let go when the next loop asks (asyncio.run per call).
    import asyncio
    import gc
    import weakref

    backend = create_backend("vllm:m", base_url=fake.base_url, api_key=API_KEY)  # type: ignore[attr-defined]
    request = ChatRequest(messages=[{"role": "user", "content": "q"}])

    async def answer() -> tuple[str, weakref.ref]:
        return (await backend.achat(request)).text, weakref.ref(backend.aclient)

    clients = []
    for text in ("first loop", "second loop", "third loop"):
        fake.reply({"content": text})
        answered, client = asyncio.run(answer())
        assert answered == text
        clients.append(client)
    gc.collect()
    assert [client() is None for client in clients] == [True, True, False]

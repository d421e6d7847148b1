"""Bad input, one table: every case must fail with the right exception and a message that says
what was wrong and what to do. Nothing here sends a request or loads weights (the GGUF cases
read the header only); a case that sends anything fails, since the endpoints are closed ports.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from langchain_modelplug import ChatModelPlug, FallbackChatModel
from modelplug import (
    ConfigurationError,
    ModelNotFoundError,
    UnknownModelError,
    UnknownProviderError,
    UnsupportedCapabilityError,
)

KEY = {"api_key": "sk-bad-input-test"}
CLOSED = "http://127.0.0.1:9"  # discard port: anything sent is refused at once
PNG = "data:image/png;base64,iVBORw0KGgo="
IMAGE = HumanMessage(content=[{"type": "text", "text": "What is this?"},
                              {"type": "image_url", "image_url": {"url": PNG}}])
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}}}}


def openai(**kwargs: Any) -> ChatModelPlug:
    return ChatModelPlug(model="openai:gpt-4o", base_url=CLOSED + "/v1", **KEY, **kwargs)


def anthropic(**kwargs: Any) -> ChatModelPlug:
    return ChatModelPlug(model="anthropic:claude-sonnet-4-6", base_url=CLOSED, **KEY, **kwargs)


def ollama(model: str = "ollama:qwen3:8b", **kwargs: Any) -> ChatModelPlug:
    return ChatModelPlug(model=model, base_url=CLOSED, **kwargs)


def gguf(tmp: Path, data: bytes) -> str:
    path = tmp / "model.gguf"
    path.write_bytes(data)
    return str(path)


#: id -> (call taking a tmp folder, expected exception, regex the message must match)
CASES: dict[str, tuple[Callable[[Path], Any], type[BaseException], str]] = {
    # -- model strings --------------------------------------------------------------------------
    "empty model string": (lambda _: ChatModelPlug(model=""), ConfigurationError,
                           r"Expected a model string like 'provider:model_id'.*got ''"),
    "empty provider": (lambda _: ChatModelPlug(model=":gpt-4o", **KEY), UnknownProviderError,
                       r"Unknown provider ''\. Available providers .*'openai'"),
    "empty model id": (lambda _: ChatModelPlug(model="openai:", **KEY), ConfigurationError,
                       r"'openai:' has an empty model id\. Write it as 'openai:<model_id>'"),
    "unknown provider": (lambda _: ChatModelPlug(model="foo:bar"), UnknownProviderError,
                         r"Unknown provider 'foo'\. Available providers .*'anthropic'"),
    "unknown catalog model": (lambda _: ChatModelPlug(model="anthropic:claude-nonsense", **KEY),
                              UnknownModelError,
                              r"'anthropic' has no model id 'claude-nonsense'\. Available: .*"
                              r"'claude-sonnet-4-6'"),
    "unknown bare name": (lambda _: ChatModelPlug(model="no-such-model-anywhere"),
                          UnknownModelError,
                          r"No catalog model is named 'no-such-model-anywhere'\. Use "
                          r"'provider:model_id'"),
    "unknown capability flag": (lambda _: ChatModelPlug(model="vllm:x;bogus"), ConfigurationError,
                                r"Unknown capability flag\(s\) \['bogus'\].*Valid flags: "
                                r"\['tools', 'thinking', 'vision'\]"),
    # -- provider kwargs ----------------------------------------------------------------------
    "kwarg the provider does not take": (lambda _: openai(model_path="/x.gguf"), TypeError,
                                         r"'openai' got an unexpected keyword argument "
                                         r"'model_path'\. Standard parameters: \['temperature'.*"
                                         r"Settings of 'openai': \['api_key'"),
    "max_retries on native ollama": (lambda _: ollama(max_retries=2), ValueError,
                                     r"has no request retry.*Use the 'ollama-openai' provider"),
    "cache_prompt off anthropic": (lambda _: openai(cache_prompt=True), TypeError,
                                   r"'cache_prompt' is an Anthropic-only setting"),
    "timeout in-process": (lambda _: ChatModelPlug(model="llamacpp:smollm2", timeout=3),
                           TypeError, r"'llamacpp' runs in-process.*takes no 'timeout'"),
    "keep-alive not a number": (lambda _: ollama(model_keep_alive_seconds="soon"),
                                ConfigurationError,
                                r"model_keep_alive_seconds must be a number of seconds.*'soon'"),
    "thinking budget too small": (lambda _: anthropic(thinking_budget=10), ConfigurationError,
                                  r"thinking_budget must be an int of at least 1024.*got 10"),
    # -- capabilities, refused before any request -----------------------------------------------
    "image to a non-vision model": (lambda _: ollama().invoke([IMAGE]),
                                    UnsupportedCapabilityError,
                                    r"'ollama:qwen3:8b' does not take image inputs.*Use a vision "
                                    r"model, or declare it with 'ollama:qwen3:8b;vision'"),
    "tools to a model without tools": (
        lambda _: ChatModelPlug(model="llamacpp:smollm2", chat_format="chatml")
        .bind_tools([TOOL]).invoke("hi"), UnsupportedCapabilityError,
        r"does not support tool calling, but the request has 1 tool\(s\)"),
    "tool that is not a tool": (lambda _: openai().invoke("hi", tools=[42]), ConfigurationError,
                                r"Tool 0 is 42, not a tool definition"),
    "tool without a name": (lambda _: openai().invoke("hi", tools=[
        {"type": "function", "function": {"parameters": {"type": "object"}}}]),
        ConfigurationError, r"Tool 0 has no name"),
    "tool parameters not an object schema": (lambda _: openai().invoke("hi", tools=[
        {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
        ConfigurationError, r"Tool 'f' has parameters .*JSON schema of type 'object'"),
    "unconvertible tool": (lambda _: openai().bind_tools([42]), ValueError,
                           r"(?s)Unsupported function.*Functions must be passed in as Dict"),
    "tool_choice names no tool": (lambda _: openai().bind_tools([TOOL], tool_choice="other"),
                                  ValueError, r"tool_choice 'other' names no tool given\. "
                                  r"Tools: \['lookup'\]"),
    "unknown response_format": (lambda _: anthropic().invoke(
        "hi", response_format={"type": "xml"}), ConfigurationError,
        r"Unknown response_format type 'xml'; use 'json_schema' or 'json_object'"),
    "response_format not a dict": (lambda _: openai().invoke("hi", response_format="json"),
                                   ConfigurationError,
                                   r"Unknown response_format type 'json'; use 'json_schema' or "
                                   r"'json_object' .*or leave response_format unset"),
    "unknown structured output method": (
        lambda _: openai().with_structured_output({"title": "x", "type": "object"},
                                                  method="magic"),
        ValueError, r"Unknown structured output method 'magic'"),
    "seed on anthropic": (lambda _: anthropic(seed=1).invoke("hi"), UnsupportedCapabilityError,
                          r"Anthropic's API has no seed; remove seed=1"),
    "forced tool with thinking": (lambda _: anthropic(reasoning=True).bind_tools(
        [TOOL], tool_choice="any").invoke("hi"), UnsupportedCapabilityError,
        r"thinking does not allow forced tool use"),
    "temperature with thinking": (lambda _: anthropic(reasoning=True, temperature=0.2)
                                  .invoke("hi"), UnsupportedCapabilityError,
                                  r"thinking needs temperature 1 or unset; got temperature=0\.2"),
    "max_tokens under the thinking budget": (
        lambda _: anthropic(reasoning=True, max_tokens=100, thinking_budget=2048).invoke("hi"),
        ConfigurationError, r"max_tokens=100 must exceed the thinking budget \(2048 tokens\)"),
    "o-series reasoning off": (lambda _: ChatModelPlug(
        model="openai:o3-mini", base_url=CLOSED, reasoning=False, **KEY).invoke("hi"),
        UnsupportedCapabilityError, r"'openai:o3-mini' is an o-series reasoning model"),
    "reasoning switch on a plain model": (lambda _: openai(reasoning=True).invoke("hi"),
                                          UnsupportedCapabilityError,
                                          r"reasoning=True has no switch on 'openai:gpt-4o'"),
    "http image on native ollama": (lambda _: ollama("ollama:gemma3:4b").invoke([HumanMessage(
        content=[{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])]), ValueError,
        r"takes inline images only .*not the http\(s\) URL 'https://x/y\.png'"),
    "empty messages": (lambda _: openai().invoke([]), ConfigurationError,
                       r"The request has no messages\. Pass at least one message"),
    # -- in-process weights ---------------------------------------------------------------------
    "n_ctx over the trained length": (lambda _: ChatModelPlug(model="llamacpp:smollm2",
                                                              n_ctx=10**7), ConfigurationError,
                                      r"n_ctx=10000000 exceeds the trained context length .*"
                                      r"\(8192 tokens\)\. Use n_ctx=8192 or less"),
    "n_ctx not positive": (lambda _: ChatModelPlug(model="llamacpp:smollm2", n_ctx=0),
                           ConfigurationError, r"n_ctx must be a positive int; got 0"),
    "model_path missing": (lambda _: ChatModelPlug(model="llamacpp:my-model"),
                           ModelNotFoundError,
                           r"'llamacpp:my-model' needs the setting model_path \(the path of a \.gguf "
                           r"file\).* For example: ChatModelPlug\(model='llamacpp:my-model', "
                           r"model_path='/models/model\.gguf'\)\."),
    "model_path does not exist": (lambda tmp: ChatModelPlug(
        model="llamacpp:x", model_path=str(tmp / "nope.gguf")), ModelNotFoundError,
        r"model_path '.*nope\.gguf' for 'llamacpp:x' does not exist or is not a file"),
    "corrupt GGUF": (lambda tmp: ChatModelPlug(model="llamacpp:x",
                                               model_path=gguf(tmp, b"not a gguf" * 10)),
                     ConfigurationError, r"is not a readable GGUF file.*bad magic"),
    "truncated GGUF": (lambda tmp: ChatModelPlug(model="llamacpp:x",
                                                 model_path=gguf(tmp, b"GGUF\x03\x00")),
                       ConfigurationError, r"is not a readable GGUF file"),
    # -- keys and wrappers ----------------------------------------------------------------------
    "missing openai key": (lambda _: ChatModelPlug(model="openai:gpt-4o"), ConfigurationError,
                           r"'openai' needs an API key and none was found: set the "
                           r"OPENAI_API_KEY environment variable or pass the setting api_key\. "
                           r"For example: ChatModelPlug\(model='openai:gpt-4o', api_key=\.\.\.\)"),
    "missing anthropic key": (lambda _: ChatModelPlug(model="anthropic:claude-sonnet-4-6"),
                              ConfigurationError,
                              r"'anthropic' needs an API key and none was found: set the "
                              r"ANTHROPIC_API_KEY environment variable"),
    "fallback without candidates": (lambda _: FallbackChatModel([]), ValueError,
                                    r"needs at least one candidate"),
    "fallback retry_on not exceptions": (lambda _: FallbackChatModel(["vllm:x"], retry_on=42),
                                         TypeError, r"retry_on must be an exception class"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OLLAMA_HOST", CLOSED)
    call, expected, pattern = CASES[case]
    with pytest.raises(expected, match=pattern) as info:
        call(tmp_path)
    assert "sk-bad-input-test" not in str(info.value)


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30


#: Cases that are the caller's to fix: plain ConfigurationErrors, which no fallback set retries
#: (UnsupportedCapabilityError is for "this model cannot", which a fallback set skips past).
CALLER_ERRORS = ["unknown response_format", "response_format not a dict", "empty messages"]


@pytest.mark.parametrize("case", CALLER_ERRORS)
def test_caller_errors_are_not_retryable(case: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from modelplug.fallback import is_retryable

    monkeypatch.setenv("OLLAMA_HOST", CLOSED)
    call, _, _ = CASES[case]
    with pytest.raises(ConfigurationError) as info:
        call(tmp_path)
    assert not isinstance(info.value, UnsupportedCapabilityError)
    assert not is_retryable(info.value)

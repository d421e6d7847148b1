"""An API key never shows: not in repr/str, DEBUG logs, exception messages and tracebacks, nor
in dumpd/dumps output, for every provider that takes a key (each called against a closed port
and against a fake that answers 401)."""

from __future__ import annotations

import logging
import traceback

import pytest
from langchain_core.load import dumpd, dumps

from langchain_modelplug import ChatModelPlug
from modelplug import ModelPlugError, UnknownModelError, get_provider, providers

SECRET = "sk-SECRET-do-not-leak-7f3a"
CLOSED = "http://127.0.0.1:9"
KEYED = [key for key in providers() if get_provider(key).api_key_env]


def build(provider: str) -> ChatModelPlug:
    model = f"{provider}:x"
    try:
        return ChatModelPlug(model=model, api_key=SECRET, base_url=CLOSED, max_retries=0,
                             timeout=5)
    except UnknownModelError as exc:  # a closed catalog: take its first model
        model_id = str(exc).split("Available: ['", 1)[1].split("'", 1)[0]
        return ChatModelPlug(model=f"{provider}:{model_id}", api_key=SECRET, base_url=CLOSED,
                             max_retries=0, timeout=5)


def test_every_keyed_provider_is_covered() -> None:
    assert {"openai", "anthropic", "gemini"} <= set(KEYED)


@pytest.mark.parametrize("provider", KEYED)
def test_key_never_shows(provider: str, caplog: pytest.LogCaptureFixture) -> None:
    llm = build(provider)
    assert llm.api_key.get_secret_value() == SECRET  # it is there, wrapped
    for text in (repr(llm), str(llm), dumps(llm), str(dumpd(llm)), repr(llm.backend.settings)):
        assert SECRET not in text
    caplog.set_level(logging.DEBUG)  # the SDKs and httpx log requests at DEBUG
    with pytest.raises(ModelPlugError) as info:
        llm.invoke("hi")
    assert info.value.retryable  # a refused connection, typed
    shown = "".join(traceback.format_exception(info.value))  # the chained SDK error included
    assert SECRET not in shown
    assert SECRET not in caplog.text
    assert caplog.records  # DEBUG logging did run


def test_key_echoed_by_the_server_is_redacted() -> None:
    """A 401 whose body quotes the key (as some servers do) still shows no key."""
    from fakes.server import LoopbackServer
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from modelplug import AuthenticationError

    async def refuse(request):  # quotes back the key it got
        got = request.headers["authorization"].removeprefix("Bearer ")
        return JSONResponse({"error": {"message": f"Incorrect API key provided: {got}",
                                       "type": "invalid_request_error",
                                       "code": "invalid_api_key"}}, status_code=401)

    server = LoopbackServer(Starlette(routes=[Route("/v1/chat/completions", refuse,
                                                    methods=["POST"])])).start()
    try:
        llm = ChatModelPlug(model="openai:gpt-4o", api_key=SECRET, base_url=server.url + "/v1",
                            max_retries=0)
        with pytest.raises(AuthenticationError) as info:
            llm.invoke("hi")
        assert "Incorrect API key provided: ***" in str(info.value)
        assert SECRET not in str(info.value)
        # The SDK's own error, chained as the cause, is scrubbed too: tracebacks print it.
        assert "Incorrect API key provided: ***" in str(info.value.__cause__)
        assert SECRET not in "".join(traceback.format_exception(info.value))
    finally:
        server.stop()


@pytest.mark.parametrize("provider", KEYED)
def test_key_never_shows_in_the_other_components(provider: str) -> None:
    """The LLM, embeddings and LlamaIndex classes hold the same key the same way."""
    from llama_index.embeddings.modelplug import ModelPlugEmbedding
    from llama_index.llms.modelplug import FallbackLLM, ModelPlug

    from langchain_modelplug import ModelPlugEmbeddings, ModelPlugLLM

    model = build(provider).model  # a model id the provider's catalog accepts
    settings = {"api_key": SECRET, "base_url": CLOSED, "max_retries": 0}
    components = [ModelPlugLLM(model=model, **settings),
                  ModelPlugEmbeddings(model=model, **settings),
                  ModelPlug(model=model, **settings),
                  FallbackLLM([ModelPlug(model=model, **settings)]),
                  ModelPlugEmbedding(model=model, **settings)]
    for component in components:
        texts = [repr(component), str(component)]
        if hasattr(component, "to_json"):  # LlamaIndex serialization
            texts.append(component.to_json())
        else:
            texts += [dumps(component), str(dumpd(component))]
        for text in texts:
            assert SECRET not in text, (type(component).__name__, text)

"""LangServe: ChatModelPlug (and a FallbackChatModel) served by real uvicorn on loopback, called
through RemoteRunnable."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from fakes.server import free_port
from langchain_core.messages import AIMessage, AIMessageChunk

from langchain_modelplug import ChatModelPlug, FallbackChatModel

QUESTION = "What is the capital of France? Answer in one sentence."
SECRET = "sk-langserve-must-never-show-0123456789"


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    import uvicorn
    from fastapi import FastAPI
    from langserve import add_routes

    llm = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=16)
    down = ChatModelPlug(model="vllm:x", base_url=f"http://127.0.0.1:{free_port()}/v1",
                         max_retries=0)
    # A keyed cloud candidate whose server is down: its key must not leak through any endpoint.
    keyed = ChatModelPlug(model="openai:gpt-4o-mini", api_key=SECRET, max_retries=0,
                          base_url=f"http://127.0.0.1:{free_port()}/v1")
    app = FastAPI()
    add_routes(app, llm, path="/chat")
    add_routes(app, FallbackChatModel([down, llm]), path="/fallback")
    add_routes(app, keyed, path="/keyed")
    add_routes(app, FallbackChatModel([keyed, llm]), path="/keyed-fallback")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def remote(base_url: str):
    from langserve import RemoteRunnable

    return RemoteRunnable(f"{base_url}/chat/")


def test_invoke(remote) -> None:
    message = remote.invoke(QUESTION)
    assert isinstance(message, AIMessage)
    assert "Paris" in message.content
    assert message.usage_metadata["output_tokens"] > 0
    assert message.response_metadata["model_provider"] == "llamacpp"


def test_stream(remote) -> None:
    chunks = list(remote.stream(QUESTION))
    assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "Paris" in "".join(c.content for c in chunks)


def test_batch(remote) -> None:
    answers = remote.batch([QUESTION, "Say hello."])
    assert len(answers) == 2 and all(isinstance(a, AIMessage) for a in answers)
    assert "Paris" in answers[0].content
    assert answers[1].content


async def test_async_invoke_and_stream(remote) -> None:
    message = await remote.ainvoke(QUESTION)
    assert "Paris" in message.content
    chunks = [c async for c in remote.astream(QUESTION)]
    assert "Paris" in "".join(c.content for c in chunks)


def test_fallback_model_served(base_url: str) -> None:
    from langserve import RemoteRunnable

    message = RemoteRunnable(f"{base_url}/fallback/").invoke(QUESTION)
    assert "Paris" in message.content
    assert message.response_metadata["fallback_model"] == "llamacpp:smollm2"


def test_no_endpoint_shows_an_api_key(base_url: str) -> None:
    import httpx

    def call(method: str, url: str, **kwargs) -> tuple[int, str]:
        """Status and every byte that arrived. A fresh connection each: uvicorn drops the
        connection of a request that raised, and LangServe cuts a failing stream short."""
        parts: list[bytes] = []
        with httpx.stream(method, base_url + url, timeout=120, **kwargs) as response:
            try:
                parts.extend(response.iter_raw())
            except httpx.RemoteProtocolError:
                pass
        return response.status_code, b"".join(parts).decode(errors="replace")

    bodies = []
    for path in ("/keyed", "/keyed-fallback"):
        bodies += [call("GET", f"{path}/{schema}")
                   for schema in ("input_schema", "output_schema", "config_schema")]
        bodies.append(call("POST", f"{path}/invoke", json={"input": QUESTION}))
        bodies.append(call("POST", f"{path}/batch", json={"inputs": [QUESTION]}))
        bodies.append(call("POST", f"{path}/stream", json={"input": QUESTION}))
    assert bodies[3][0] >= 500 and bodies[9][0] == 200  # the keyed model fails; its fallback answers
    assert "Paris" in bodies[9][1]
    for _status, text in bodies:
        assert SECRET not in text

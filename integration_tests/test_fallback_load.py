"""Load: 1,000 concurrent astream calls through FallbackChatModel, 10% of them faulted.

Two loopback OpenAI fakes answer "echo: <the caller's message>" in several deltas, so every
answer says whose it is. The primary spoils one request in ten (HTTP 500, 503, 429, a TCP reset,
malformed JSON before the first chunk, or a stream cut after its first text). Every call must end
as the policy says: a fault before the first chunk fails over to the secondary and still gets
its own answer; a cut after the first chunk propagates as ProviderUnavailableError with a prefix
of its own answer delivered. No answer may be lost, duplicated or crossed between callers.

(Thread-safety of one in-process model under 16 threads is covered elsewhere in the
integration tests; this is the networked, async side.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes.faults import Fault, serve, status
from fakes.openai_api import API_KEY, FakeOpenAI

from langchain_modelplug import ChatModelPlug, FallbackChatModel
from modelplug import ProviderUnavailableError

CALLS = 1000
#: Fault of every tenth call, in turn; "drop" cuts after the first text (no failover).
FAULTS = [status(500), status(503), status(429, retry_after=1), Fault("reset"),
          Fault("malformed"), Fault("drop", after=2)]


def fault_of(i: int) -> Fault | None:
    return FAULTS[(i // 10) % len(FAULTS)] if i % 10 == 0 else None


def index_of(body: dict[str, Any]) -> int:
    return int(body["messages"][-1]["content"].removeprefix("request "))


@pytest.fixture(scope="module")
def servers() -> Any:
    primary, secondary = FakeOpenAI(), FakeOpenAI()
    primary.echo = secondary.echo = True
    (p_inj, p_srv), (s_inj, s_srv) = serve(primary.app, "openai"), serve(secondary.app, "openai")
    p_inj.choose = lambda body: fault_of(index_of(body))
    yield p_inj, p_srv, s_inj, s_srv
    p_srv.stop()
    s_srv.stop()


async def test_concurrent_astream_with_faults(servers: Any) -> None:
    p_inj, p_srv, s_inj, s_srv = servers

    def candidate(url: str) -> ChatModelPlug:
        return ChatModelPlug(model="vllm:echo", base_url=url + "/v1", api_key=API_KEY,
                             max_retries=0, timeout=60)

    model = FallbackChatModel([candidate(p_srv.url), candidate(s_srv.url)])

    async def call(i: int) -> tuple[str, BaseException | None]:
        text = []
        try:
            async for chunk in model.astream(f"request {i}"):
                text.append(chunk.content)
        except Exception as exc:
            return "".join(text), exc
        return "".join(text), None

    results = await asyncio.gather(*(call(i) for i in range(CALLS)))

    failed_over = []
    for i, (text, error) in enumerate(results):
        expected = f"echo: request {i}"
        fault = fault_of(i)
        if fault is not None and fault.kind == "drop":
            assert isinstance(error, ProviderUnavailableError), (i, error)
            assert text and expected.startswith(text) and text != expected, (i, text)
        else:
            assert error is None, (i, error)
            assert text == expected, (i, text)  # its own answer, whole, exactly once
        if fault is not None and fault.kind != "drop":
            failed_over.append(i)
    # Every call reached the primary once; only the faulted-before-first-chunk ones (and each
    # once) reached the secondary: nothing replayed, nothing duplicated.
    assert sorted(index_of(body) for _, body in p_inj.seen) == list(range(CALLS))
    assert sorted(index_of(body) for _, body in s_inj.seen) == failed_over
    assert len(failed_over) == 84  # 100 faulted calls, 16 of them cut mid-stream

"""The routing health table where people look: ``modelplug health`` (the command line) and
``modelplug serve``'s ``GET /health``. Real in-process SmolLM2, an OpenAI wire fake, and a port
nobody listens on (refused at once)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fakes.faults import serve, status
from fakes.openai_api import API_KEY, FakeOpenAI
from fakes.server import free_port
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from langchain_modelplug import ChatModelPlug, FallbackChatModel
from modelplug.cli import app
from modelplug.routing import check, health_table
from modelplug.server import create_app


@pytest.fixture(scope="module")
def replica() -> Any:
    fake = FakeOpenAI()
    injector, server = serve(fake.app, "openai")
    yield fake, injector, server.url + "/v1"
    server.stop()


def row(endpoint_part: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [r for r in rows if endpoint_part in r["endpoint"]]
    return found


def test_the_health_command_checks_each_model_and_shows_the_table(replica: Any) -> None:
    fake, _, url = replica
    fake.reply({"role": "assistant", "content": "pong"})
    dead = f"http://127.0.0.1:{free_port()}/v1"
    result = CliRunner().invoke(app, [
        "health", "vllm:gpt-4o-mini", "llamacpp:smollm2", "--json", "--timeout", "5",
        "-s", f"base_url={url}", "-s", f"api_key={API_KEY}"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["endpoints"]
    assert row(url, rows)["state"] == "closed" and row(url, rows)["successes"] == 1
    assert row("llamacpp:smollm2", rows)["successes"] == 1  # base_url left out for it
    result = CliRunner().invoke(app, ["health", "vllm:Qwen/Qwen3-8B", "--json", "-s",
                                      f"base_url={dead}"])
    assert result.exit_code == 1  # a failed check
    out = json.loads(result.stdout)
    down = row(dead, out["endpoints"])
    assert down["state"] == "open" and down["failures_in_a_row"] == 1
    assert down["retry_in_s"] > 0 and "ProviderUnavailableError" in down["last_error"]
    assert "ProviderUnavailableError" in out["failed_checks"]["vllm:Qwen/Qwen3-8B"]


def test_the_health_command_prints_a_table(replica: Any) -> None:
    _, injector, url = replica
    injector.inject(status(503))
    result = CliRunner().invoke(app, ["health", "vllm:gpt-4o-mini", "-s", f"base_url={url}",
                                      "-s", f"api_key={API_KEY}"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "Routing health" in result.output and "open" in result.output
    assert "vllm:gpt-4o-mini" in result.output


def test_check_records_an_answer_and_a_failure_like_a_call_of_a_set(replica: Any) -> None:
    fake, _, url = replica
    fake.reply({"role": "assistant", "content": "pong"})
    ok = ChatModelPlug(model="vllm:gpt-4o-mini", base_url=url, api_key=API_KEY).backend
    assert check(ok) is None
    assert row(url, health_table())["successes"] == 1


def test_the_servers_health_shows_the_routing_table(replica: Any) -> None:
    """An app that routes (a fallback set in the server's process) shows its table at
    /health; a fresh process shows an empty one."""
    fake, _, url = replica
    client = TestClient(create_app("vllm:gpt-4o-mini", base_url=url, api_key=API_KEY))
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["routing"] == []
    dead = f"http://127.0.0.1:{free_port()}/v1"
    fake.reply({"role": "assistant", "content": "hi"})
    FallbackChatModel([ChatModelPlug(model="vllm:m", base_url=dead, max_retries=0),
                       ChatModelPlug(model="vllm:gpt-4o-mini", base_url=url,
                                     api_key=API_KEY)]).invoke("hi")
    rows = client.get("/health").json()["routing"]
    assert row(dead, rows)["state"] == "open"
    assert row(url, rows)["state"] == "closed" and row(url, rows)["successes"] == 1

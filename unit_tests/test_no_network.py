"""Importing every package of ours and constructing models opens no socket (sockets blocked in a
fresh interpreter, so nothing imported earlier hides an import-time connection)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r'''
import socket
attempts = []

class Blocked(socket.socket):
    def connect(self, address):
        attempts.append(address)
        raise ConnectionRefusedError(f"network blocked: {address}")
    connect_ex = connect

socket.socket = Blocked
real_create = socket.create_connection
def create_connection(address, *args, **kwargs):
    attempts.append(address)
    raise ConnectionRefusedError(f"network blocked: {address}")
socket.create_connection = create_connection

import modelplug, langchain_modelplug, llama_index.llms.modelplug  # noqa: E401
from langchain_modelplug import ChatModelPlug, FallbackChatModel, ModelPlugEmbeddings
from llama_index.llms.modelplug import FallbackLLM, ModelPlug

key = {"api_key": "sk-x"}
built = [
    ChatModelPlug(model="openai:gpt-4o", **key),
    ChatModelPlug(model="anthropic:claude-sonnet-4-6", **key),
    ChatModelPlug(model="gemini:gemini-2.5-flash", **key),
    ChatModelPlug(model="ollama:qwen3:8b"),
    ChatModelPlug(model="vllm:Qwen/Qwen3-8B"),
    ChatModelPlug(model="llamaserver:any"),
    FallbackChatModel([ChatModelPlug(model="openai:gpt-4o-mini", **key), "ollama:qwen3:8b"]),
    ModelPlug(model="anthropic:claude-sonnet-4-6", **key),
    ModelPlug(model="ollama:qwen3:8b"),
    FallbackLLM(["vllm:x", "ollama:qwen3:8b"]),
    ModelPlugEmbeddings(model="vllm:BAAI/bge-small-en-v1.5"),
]
for b in built:
    getattr(b, "profile", None); getattr(b, "metadata", None)
assert not attempts, attempts
print("ok", len(built))
'''


def test_no_socket_during_import_or_construction() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok 11"

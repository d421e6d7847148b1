"""Importing every package of ours and constructing models opens no socket and resolves no host
name (both blocked in a fresh interpreter, so nothing imported earlier hides an import-time
connection): chat models, LLMs, embeddings and media components of every kind of provider."""

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
def getaddrinfo(host, *args, **kwargs):
    attempts.append(("getaddrinfo", host))
    raise OSError(f"name resolution blocked: {host}")
socket.getaddrinfo = getaddrinfo

import modelplug, langchain_modelplug, llama_index.llms.modelplug  # noqa: E401
from langchain_modelplug import ChatModelPlug, FallbackChatModel, ModelPlugEmbeddings
from langchain_modelplug import AudioModelPlug, ImageModelPlug, ModelPlugLLM
from llama_index.embeddings.modelplug import ModelPlugEmbedding
from llama_index.llms.modelplug import FallbackLLM, ModelPlug, audio_tool, image_tool

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
    ModelPlugEmbeddings(model="ollama:nomic-embed-text"),
    ModelPlugEmbedding(model="vllm:BAAI/bge-small-en-v1.5"),
    ModelPlugLLM(model="llamaserver:any"),
    # In-process models: construction reads at most a local file header, and never the hub.
    ChatModelPlug(model="llamacpp:smollm2"),
    # (allow_download: an uncached hub id is otherwise refused at construction)
    ChatModelPlug(model="hf:HuggingFaceTB/SmolLM2-135M-Instruct", allow_download=True),
    ModelPlug(model="hf:HuggingFaceTB/SmolLM2-135M-Instruct", allow_download=True),
    ModelPlugEmbedding(model="llamacpp:smollm2"),
    ImageModelPlug(model="hf:stabilityai/sdxl-turbo", allow_download=True),
    ImageModelPlug(model="gemini:nano-banana", **key),
    AudioModelPlug(model="hf:facebook/musicgen-small", allow_download=True),
    image_tool("hf:stabilityai/sdxl-turbo", allow_download=True),
    audio_tool("hf:facebook/musicgen-small", allow_download=True),
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
    assert result.stdout.strip() == "ok 23"

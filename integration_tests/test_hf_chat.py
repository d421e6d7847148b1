"""ChatModelPlug on the real SmolLM2-135M-Instruct through transformers (``hf:`` backend).

The model folder is the GGUF converted by the ``smollm2_hf_path`` session fixture. Answers are
greedy (temperature 0) and short: the machine has 2 shared cores.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from langchain_core.messages import AIMessageChunk
from pydantic import BaseModel

from langchain_modelplug import ChatModelPlug
from modelplug import ChatRequest, create_backend, weights
from modelplug.errors import ConfigurationError, ContextOverflowError, ModelNotFoundError

PARIS = "What is the capital of France? Answer in one sentence."
PROMPTS = [
    PARIS,
    "What is 2+2?",
    "Name a color.",
    "Say hello.",
    "What is the capital of Italy?",
    "Name a fruit.",
    "What day comes after Monday?",
    "What is the opposite of hot?",
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on 2 cores shared with other jobs, two spinning threads are ~10x
    slower, not faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_string(smollm2_hf_path: Path) -> str:
    return f"hf:{smollm2_hf_path}"


@pytest.fixture(scope="module")
def llm(model_string: str) -> ChatModelPlug:
    return ChatModelPlug(model=model_string, temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def tokenizer(smollm2_hf_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_hf_path, local_files_only=True)


class _CountingGenerate:
    """Wraps the transformers model's own ``generate`` (the locked path: continuous batching
    does not call it) to count calls and batch rows."""

    def __init__(self, llm: ChatModelPlug) -> None:
        self.model = llm.backend._loaded().model.model
        self.calls: list[int] = []

    def __enter__(self) -> _CountingGenerate:
        original = self.model.generate

        def counting(*args, **kwargs):
            self.calls.append(kwargs["input_ids"].shape[0])
            return original(*args, **kwargs)

        self.model.generate = counting
        return self

    def __exit__(self, *exc) -> None:
        del self.model.generate  # back to the class's method


def test_invoke_answers_and_reports_exact_usage(llm: ChatModelPlug, tokenizer) -> None:
    message = llm.invoke(PARIS)
    assert "Paris" in message.content
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.response_metadata["model_provider"] == "hf"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PARIS}],
                                           add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    usage = message.usage_metadata
    assert usage["input_tokens"] == len(prompt)
    # the end token is not counted, as with llama.cpp
    assert usage["output_tokens"] == len(tokenizer(message.content,
                                                   add_special_tokens=False)["input_ids"])
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_profile_comes_from_the_config_and_the_grammar_path(llm: ChatModelPlug) -> None:
    profile = llm.profile
    assert profile["max_input_tokens"] == 8192  # max_position_embeddings of the config
    assert profile["tool_calling"] is True and profile["structured_output"] is True


def test_stream_matches_invoke_and_carries_usage_once(llm: ChatModelPlug) -> None:
    chunks = list(llm.stream(PARIS))
    assert len(chunks) > 3  # token by token
    full: AIMessageChunk = sum(chunks[1:], chunks[0])
    invoked = llm.invoke(PARIS)
    assert full.content == invoked.content
    assert full.usage_metadata == invoked.usage_metadata
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert full.response_metadata["finish_reason"] == "stop"


def test_stop_sequence_cuts_the_answer(llm: ChatModelPlug) -> None:
    message = llm.invoke(PARIS, stop=["Paris"])
    assert "Paris" not in message.content and message.content.startswith("The capital")
    streamed = "".join(c.content for c in llm.stream(PARIS, stop=["Paris"]))
    assert streamed == message.content


def test_ainvoke_and_astream(llm: ChatModelPlug) -> None:
    async def run():
        message = await llm.ainvoke(PARIS)
        parts = [c.content async for c in llm.astream(PARIS)]
        return message, parts

    message, parts = asyncio.run(run())
    assert "Paris" in message.content
    assert "".join(parts) == message.content


def test_astream_never_blocks_the_event_loop(llm: ChatModelPlug) -> None:
    async def run():
        ticks = 0
        done = asyncio.Event()

        async def heartbeat():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        beat = asyncio.create_task(heartbeat())
        text, chunk_ticks = "", []
        async for chunk in llm.astream(PARIS):
            text += chunk.content
            chunk_ticks.append(ticks)
        done.set()
        await beat
        return text, ticks, chunk_ticks

    text, ticks, chunk_ticks = asyncio.run(run())
    assert "Paris" in text
    assert ticks > 10  # the loop kept running while the model generated
    assert chunk_ticks[-1] > chunk_ticks[0]  # ...between chunks, too


def magic_function(input: int) -> int:
    """Applies a magic function to an input."""
    return input + 2


def test_forced_tool_call_has_integer_args(llm: ChatModelPlug) -> None:
    message = llm.bind_tools([magic_function], tool_choice="any").invoke(
        "What is the value of magic_function(3)?")
    assert len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call["name"] == "magic_function"
    assert isinstance(call["args"]["input"], int)
    assert message.response_metadata["finish_reason"] == "tool_calls"


def test_auto_tool_choice_is_schema_valid(llm: ChatModelPlug) -> None:
    message = llm.bind_tools([magic_function]).invoke("What is the value of magic_function(3)?",
                                                       max_tokens=48)
    # a call with integer args, or a plain answer: never malformed call JSON
    assert not message.invalid_tool_calls
    for call in message.tool_calls:
        assert call["name"] == "magic_function" and isinstance(call["args"]["input"], int)


def test_streamed_tool_call_arrives_whole(llm: ChatModelPlug) -> None:
    chunks = list(llm.bind_tools([magic_function], tool_choice="magic_function").stream(
        "What is the value of magic_function(3)?"))
    full = sum(chunks[1:], chunks[0])
    assert full.tool_calls[0]["name"] == "magic_function"
    assert isinstance(full.tool_calls[0]["args"]["input"], int)


class Capital(BaseModel):
    country: str
    capital: str


def test_structured_output_validates(llm: ChatModelPlug) -> None:
    result = llm.with_structured_output(Capital).invoke(
        "Paris is the capital of France. Give the country and its capital.", max_tokens=40)
    assert isinstance(result, Capital)


def test_json_mode_returns_json(llm: ChatModelPlug) -> None:
    message = llm.invoke("Describe Paris as a JSON object.",
                         response_format={"type": "json_object"}, max_tokens=40)
    if message.response_metadata["finish_reason"] == "stop":
        assert isinstance(json.loads(message.content), dict)
    else:  # cut by max_tokens: still a JSON prefix
        assert message.content.lstrip().startswith("{")


def test_batch_of_8_equals_single_answers_decoded_together(model_string: str) -> None:
    llm = ChatModelPlug(model=model_string, temperature=0, max_tokens=12)
    singles = [llm.invoke(p) for p in PROMPTS]
    before = llm.backend.serving_stats()["completed"]
    with _CountingGenerate(llm) as counter:
        batched = llm.batch(PROMPTS)
    assert counter.calls == []  # no plain generate: the continuous batch decoded all 8
    assert llm.backend.serving_stats()["completed"] - before == 8
    assert [m.content for m in batched] == [m.content for m in singles]
    assert [m.usage_metadata for m in batched] == [m.usage_metadata for m in singles]

    abatched = asyncio.run(llm.abatch(PROMPTS[:4]))
    assert [m.content for m in abatched] == [m.content for m in singles[:4]]

    # Without continuous batching: one left-padded generate, the same greedy answers.
    locked = ChatModelPlug(model=model_string, temperature=0, max_tokens=12,
                           continuous_batching=False)
    with _CountingGenerate(locked) as counter:
        rows = locked.batch(PROMPTS[:4])
    assert counter.calls == [4]
    assert [m.content for m in rows] == [m.content for m in singles[:4]]


def test_batch_with_tools_and_mixed_rows(model_string: str) -> None:
    llm = ChatModelPlug(model=model_string, temperature=0, max_tokens=24)
    forced = llm.bind_tools([magic_function], tool_choice="any")
    with _CountingGenerate(llm) as counter:
        messages = forced.batch(["What is the value of magic_function(3)?",
                                 "What is the value of magic_function(5)?"])
    assert counter.calls == []  # grammar-constrained rows are batched too
    for message in messages:
        assert isinstance(message.tool_calls[0]["args"]["input"], int)


def test_sixteen_threads_on_one_model(model_string: str) -> None:
    llm = ChatModelPlug(model=model_string, temperature=0, max_tokens=8)
    prompts = PROMPTS[:4]
    expected = {p: llm.invoke(p).content for p in prompts}
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda i: (prompts[i % 4], llm.invoke(prompts[i % 4]).content),
                            range(16)))
    assert all(answer == expected[p] for p, answer in got)


def test_two_models_share_one_copy_of_the_weights(model_string: str) -> None:
    a = ChatModelPlug(model=model_string, temperature=0)
    b = ChatModelPlug(model=model_string, max_tokens=5)
    assert a.backend is not b.backend
    assert a.backend._loaded() is b.backend._loaded()
    assert a.backend._loaded().model.model is b.backend._loaded().model.model
    keys = [k for k in weights.loaded_keys() if k[0] == "hf" and k[1] in model_string]
    assert len(keys) == 1


def test_no_download_without_allow_download(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError) as info:
        ChatModelPlug(model="hf:some-org/not-cached-model")
    message = str(info.value)
    assert "some-org/not-cached-model" in message and "allow_download=True" in message


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        ChatModelPlug(model=f"hf:{tmp_path}/nope")


def test_pickle_weights_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConfigurationError, match="safetensors") as info:
        ChatModelPlug(model=f"hf:{tmp_path}")
    assert "pytorch_model.bin" in str(info.value)


def test_bad_settings_name_the_fix(model_string: str) -> None:
    with pytest.raises(ConfigurationError, match="tool_call_format"):
        ChatModelPlug(model=model_string, tool_call_format="YAML")
    with pytest.raises(ConfigurationError, match="trust_remote_code"):
        ChatModelPlug(model=model_string, model_kwargs={"trust_remote_code": True})


def test_embed_mean_pooled_and_normalised(model_string: str) -> None:
    backend = create_backend(model_string)
    vectors = backend.embed(["The cat sat.", "A cat was sitting.", "Stock prices fell."])
    assert len(vectors) == 3 and len(vectors[0]) == 576
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vectors)


def test_stream_cancelled_early_releases_the_model(model_string: str) -> None:
    backend = create_backend(model_string)
    request = ChatRequest(messages=[{"role": "user", "content": "Count from 1 to 100."}],
                          temperature=0, max_tokens=200)
    stream = backend.stream(request)
    next(stream)
    stream.close()  # generation stops at its next step and the lock is released
    done = threading.Event()
    threading.Thread(target=lambda: (backend.chat(ChatRequest(
        messages=[{"role": "user", "content": PARIS}], temperature=0, max_tokens=3)),
        done.set()), daemon=True).start()
    deadline = time.monotonic() + 120
    while not done.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done.is_set()


def test_a_prompt_longer_than_the_context_is_a_context_overflow(llm: ChatModelPlug) -> None:
    with pytest.raises(ContextOverflowError, match=r"context window of 'hf:.*' is 8192") as err:
        llm.invoke("word " * 9000)
    assert err.value.retryable  # a fallback with a larger window may fit it


def test_unknown_per_call_argument_is_refused_naming_it(llm: ChatModelPlug) -> None:
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['repeat_penalty'\]") \
            as err:
        llm.invoke(PARIS, repeat_penalty=1.3)  # llama.cpp's name; transformers says repetition_
    assert "'repetition_penalty'" in str(err.value) and "'top_k'" in str(err.value)
    with pytest.raises(TypeError, match="repeat_penalty"):
        list(llm.stream(PARIS, repeat_penalty=1.3))


def test_generation_extras_reach_generate(model_string: str) -> None:
    backend = create_backend(model_string)
    prompt = [{"role": "user", "content": "Write a short poem about the sea."}]

    def ask(temperature: float, seed: int | None = None, **extra) -> ChatRequest:
        return ChatRequest(messages=prompt, max_tokens=12, temperature=temperature, seed=seed,
                           extra=extra)

    greedy = backend.chat(ask(0)).text
    hot = [backend.chat(ask(1.5, seed)).text for seed in (1, 2, 3)]
    assert any(text != greedy for text in hot)  # hot sampling strays from the greedy answer...
    # ...unless top_k=1 leaves one candidate per step; each row keeps its own settings and seed.
    batched = backend.batch([ask(1.5, 1, top_k=1), ask(1.5, 1)])
    assert batched[0].text == greedy and batched[1].text == hot[0]


def test_earlier_tool_calls_and_results_reach_the_prompt(llm: ChatModelPlug, tokenizer) -> None:
    messages = [
        {"role": "user", "content": "What is the value of magic_function(3)?"},
        {"role": "assistant", "content": "", "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "magic_function", "arguments": '{"input": 3}'}}]},
        {"role": "tool", "content": "5", "tool_call_id": "call_1"},
    ]
    backend = llm.backend
    for request in (ChatRequest(messages=messages),
                    ChatRequest(messages=messages, tool_choice="none", tools=[{
                        "type": "function", "function": {"name": "magic_function",
                                                         "parameters": {"type": "object"}}}])):
        plan = backend._plan(backend._loaded().model, request)
        prompt = tokenizer.decode(plan.ids)
        assert ('<|im_start|>assistant\n{"name": "magic_function", "arguments": {"input": 3}}'
                '<|im_end|>') in prompt
        assert "<|im_start|>user\nResult of magic_function: 5<|im_end|>" in prompt

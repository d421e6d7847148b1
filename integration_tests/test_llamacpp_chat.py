"""ChatModelPlug on the real in-process SmolLM2 GGUF through llama.cpp."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel

from langchain_modelplug import ChatModelPlug
from modelplug import UnsupportedCapabilityError
from modelplug.errors import ConfigurationError, ContextOverflowError, ModelNotFoundError

PARIS = "What is the capital of France? Answer in one sentence."
PROMPTS = [
    PARIS,
    "What is 2 + 2?",
    "Name a colour.",
    "Say hello.",
    "What is the capital of Italy?",
    "Name a fruit.",
    "What day comes after Monday?",
    "What is the opposite of hot?",
]


@pytest.fixture(scope="module")
def llm() -> ChatModelPlug:
    return ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=48)


@pytest.fixture(scope="module")
def reference_llama(smollm2_path: Path):
    """llama-cpp-python's own Llama on the same file, independent of our cache and loop."""
    from llama_cpp import Llama

    return Llama(model_path=str(smollm2_path), n_ctx=2048, verbose=False)


def _stream_text(llm: ChatModelPlug, prompt: str, **kwargs) -> tuple[str, AIMessageChunk]:
    full = None
    for chunk in llm.stream(prompt, **kwargs):
        full = chunk if full is None else full + chunk
    assert full is not None
    return full.content, full


def test_invoke_answers_and_reports_usage(llm: ChatModelPlug) -> None:
    message = llm.invoke(PARIS)
    assert "Paris" in message.content
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.response_metadata["model_name"] == "smollm2"
    assert message.response_metadata["model_provider"] == "llamacpp"
    usage = message.usage_metadata
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_usage_agrees_with_the_models_tokenizer(llm: ChatModelPlug, reference_llama) -> None:
    ours = llm.invoke(PARIS)
    theirs = reference_llama.create_chat_completion(
        messages=[{"role": "user", "content": PARIS}], temperature=0, max_tokens=48)
    assert ours.content == theirs["choices"][0]["message"]["content"]
    assert ours.usage_metadata["input_tokens"] == theirs["usage"]["prompt_tokens"]
    assert ours.usage_metadata["output_tokens"] == theirs["usage"]["completion_tokens"]
    answer_tokens = reference_llama.tokenize(ours.content.encode(), add_bos=False, special=False)
    assert ours.usage_metadata["output_tokens"] == len(answer_tokens)  # end token not counted


def test_stream_matches_invoke_and_carries_usage(llm: ChatModelPlug, reference_llama) -> None:
    chunks = list(llm.stream(PARIS))
    assert len(chunks) > 3  # really streamed, token by token
    text, full = _stream_text(llm, PARIS)
    assert text == llm.invoke(PARIS).content
    assert full.usage_metadata["input_tokens"] == reference_llama.create_chat_completion(
        messages=[{"role": "user", "content": PARIS}], max_tokens=1)["usage"]["prompt_tokens"]
    assert full.usage_metadata["output_tokens"] > 0
    assert full.response_metadata["finish_reason"] == "stop"
    assert sum(1 for c in chunks if c.usage_metadata) == 1  # usage once, on the last chunk


def test_a_call_from_inside_an_open_stream_joins_the_batch(llm: ChatModelPlug) -> None:
    """A stream holds no lock: the same thread calling the model again from inside the loop
    gets its own sequence in the model's batch, and the stream goes on unharmed."""
    other = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=4)  # same weights
    parts, inner = [], None
    for n, chunk in enumerate(llm.stream(PARIS)):
        parts.append(chunk.content)
        if n == 1:
            inner = other.invoke("Hello")
    assert inner is not None and inner.content
    assert inner.usage_metadata["output_tokens"] <= 4
    assert "Paris" in "".join(parts)


def test_chain_prompt_model_parser(llm: ChatModelPlug) -> None:
    chain = ChatPromptTemplate.from_messages(
        [("user", "What is the capital of {country}? Answer in one sentence.")]
    ) | llm | StrOutputParser()
    assert "Paris" in chain.invoke({"country": "France"})


def test_system_and_multi_turn_messages(llm: ChatModelPlug) -> None:
    answer = llm.invoke([SystemMessage("You are a helpful assistant."), HumanMessage(PARIS)])
    assert answer.content.strip()


def test_stop_sequences_end_the_answer_before_the_stop(llm: ChatModelPlug) -> None:
    full_text, _ = _stream_text(llm, "Count from 1 to 10.")
    assert "3" in full_text  # the unconstrained answer goes past 3
    for kwargs in ({"stop": ["3"]}, {}):
        model = llm if kwargs else ChatModelPlug(model="llamacpp:smollm2", temperature=0,
                                                 max_tokens=48, stop=["3"])
        invoked = model.invoke("Count from 1 to 10.", **kwargs)
        assert "3" not in invoked.content
        assert full_text.startswith(invoked.content)
        assert invoked.response_metadata["finish_reason"] == "stop"
        streamed, _ = _stream_text(model, "Count from 1 to 10.", **kwargs)
        assert streamed == invoked.content


def test_max_tokens_cuts_with_length(llm: ChatModelPlug) -> None:
    message = llm.invoke("Write a long story about a dragon.", max_tokens=5)
    assert message.usage_metadata["output_tokens"] == 5
    assert message.response_metadata["finish_reason"] == "length"


def test_batch_of_8_gives_each_prompt_its_own_greedy_answer(greedy_oracle) -> None:
    """Decoded together (one llama_batch): each answer is its single answer, or parts from it
    only at a near tie (see greedy.py)."""
    from greedy import chat_tokens

    llm = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=16)
    singles = [llm.invoke(p) for p in PROMPTS]
    batched = llm.batch(PROMPTS)
    assert len(batched) == 8
    for prompt, one, many in zip(PROMPTS, singles, batched, strict=True):
        greedy_oracle.assert_greedy(chat_tokens(llm.backend, [{"role": "user", "content": prompt}]),
                                    many.content, one.content)
        assert many.usage_metadata["input_tokens"] == one.usage_metadata["input_tokens"]


def test_unknown_per_call_argument_is_refused_naming_it(llm: ChatModelPlug) -> None:
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['top_kk'\]") as err:
        llm.invoke(PARIS, top_kk=1)
    assert "'top_k'" in str(err.value) and "'repeat_penalty'" in str(err.value)
    with pytest.raises(TypeError, match="top_kk"):
        list(llm.stream(PARIS, top_kk=1))


def test_sampling_extras_reach_the_sampler(llm: ChatModelPlug) -> None:
    prompt = "Write a short poem about the sea."
    greedy = llm.invoke(prompt, max_tokens=24).content
    hot = [llm.invoke(prompt, max_tokens=24, temperature=1.5, seed=s).content for s in (1, 2, 3)]
    assert any(text != greedy for text in hot)  # hot sampling strays from the greedy answer...
    for seed in (1, 2, 3):  # ...unless top_k=1 leaves one candidate per step
        assert llm.invoke(prompt, max_tokens=24, temperature=1.5, seed=seed,
                          top_k=1).content == greedy


async def test_ainvoke_and_astream(llm: ChatModelPlug) -> None:
    message = await llm.ainvoke(PARIS)
    assert "Paris" in message.content
    parts = [chunk.content async for chunk in llm.astream(PARIS)]
    assert "".join(parts) == message.content
    results = await llm.abatch([PARIS, PARIS])
    assert [r.content for r in results] == [message.content] * 2


async def test_astream_never_blocks_the_event_loop(llm: ChatModelPlug) -> None:
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    beat = asyncio.create_task(heartbeat())
    chunks = [c async for c in llm.astream("Write a long story about a dragon.",
                                           max_tokens=40)]
    beat.cancel()
    assert len(chunks) > 10
    assert ticks >= len(chunks)  # the loop kept running between (and during) tokens


async def test_breaking_out_of_astream_releases_the_model(llm: ChatModelPlug) -> None:
    async for _chunk in llm.astream("Write a long story about a dragon."):
        break
    # The worker thread stopped and gave the model back: the next call is served.
    assert "Paris" in (await asyncio.wait_for(llm.ainvoke(PARIS), timeout=60)).content


def test_structured_output_through_a_json_schema_grammar(llm: ChatModelPlug) -> None:
    class Person(BaseModel):
        name: str
        age: int

    person = llm.with_structured_output(Person).invoke("Invent a person with a name and age.")
    assert isinstance(person, Person) and person.name
    raw = llm.with_structured_output(Person, include_raw=True).invoke("Invent a person.")
    assert isinstance(raw["parsed"], Person) and raw["parsing_error"] is None
    as_dict = llm.with_structured_output(Person.model_json_schema(), method="json_mode").invoke(
        "Describe a person as JSON with keys name and age.")
    assert isinstance(as_dict, dict)


def test_models_naming_the_same_file_share_weights(llm: ChatModelPlug) -> None:
    other = ChatModelPlug(model="llamacpp:smollm2", temperature=0.7)
    assert other.backend._loaded().model is llm.backend._loaded().model


def test_profile_comes_from_the_gguf(llm: ChatModelPlug) -> None:
    assert llm.profile["max_input_tokens"] == 8192  # SmolLM2's trained context
    assert llm.profile["tool_calling"] is True  # through the JSON-schema grammar
    assert llm.profile["structured_output"] is True
    small = ChatModelPlug(model="llamacpp:smollm2", n_ctx=1024)
    assert small.profile["max_input_tokens"] == 1024


def test_tools_without_a_tool_path_fail_before_generating() -> None:
    def magic_function(value: int) -> int:
        """Apply a magic function to an input."""
        return value + 2

    # chat_format= hands formatting to llama-cpp-python's handler, which has no grammar tool path.
    delegated = ChatModelPlug(model="llamacpp:smollm2", chat_format="chatml")
    assert delegated.profile["tool_calling"] is False
    with pytest.raises(UnsupportedCapabilityError, match="does not support tool calling"):
        delegated.bind_tools([magic_function]).invoke("What is magic_function(3)?")


def test_n_ctx_over_the_trained_length_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"n_ctx=100000 exceeds the trained context "
                                                 r"length of SmolLM2-135M-Instruct.Q4_1.gguf"):
        ChatModelPlug(model="llamacpp:smollm2", n_ctx=100_000)


def test_a_prompt_longer_than_the_context_is_refused() -> None:
    tiny = ChatModelPlug(model="llamacpp:smollm2", n_ctx=64)
    with pytest.raises(ContextOverflowError, match="context window of 'llamacpp:smollm2' is 64"):
        tiny.invoke("word " * 200)


def test_model_path_and_corrupt_files(tmp_path: Path, smollm2_path: Path) -> None:
    explicit = ChatModelPlug(model="llamacpp:my-model", model_path=str(smollm2_path),
                             temperature=0, max_tokens=48)
    assert "Paris" in explicit.invoke(PARIS).content
    with pytest.raises(ModelNotFoundError, match="needs the setting model_path"):
        ChatModelPlug(model="llamacpp:qwen3-8b")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        ChatModelPlug(model="llamacpp:x", model_path=str(tmp_path / "missing.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ConfigurationError, match="is not a readable GGUF file"):
        ChatModelPlug(model="llamacpp:x", model_path=str(junk))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(smollm2_path.read_bytes()[:4096])
    with pytest.raises(ConfigurationError, match="is not a readable GGUF file"):
        ChatModelPlug(model="llamacpp:x", model_path=str(truncated))

"""Tools, structured output, the shared weights cache and concurrency on the real SmolLM2 GGUF."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

import modelplug
from langchain_modelplug import ChatModelPlug, ModelPlugEmbeddings
from langchain_modelplug._convert import to_openai_messages
from modelplug import ChatRequest
from modelplug.weights import loaded_keys

QUESTION = "What is the value of magic_function(3)?"
PARIS = "What is the capital of France? Answer in one sentence."


def magic_function(input: int) -> int:
    """Applies a magic function to an input."""
    return input + 2


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny in {city}"


TOOLS = {f.__name__: StructuredTool.from_function(f) for f in (magic_function, get_weather)}


def assert_args_match_the_schema(call: dict) -> None:
    """The call names a bound tool and its args follow that tool's JSON schema exactly: the
    required keys, no others, and the declared types (strict: no "3" for 3)."""
    tool = TOOLS[call["name"]]
    schema = convert_to_openai_tool(tool)["function"]["parameters"]
    assert set(schema.get("required", [])) <= set(call["args"]) <= set(schema["properties"])
    tool.args_schema.model_validate(call["args"], strict=True)


@pytest.fixture(scope="module")
def llm() -> ChatModelPlug:
    return ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=64)


@pytest.mark.parametrize("tool_choice", ["any", "required", "magic_function", True])
def test_forced_tool_call_has_integer_args(llm: ChatModelPlug, tool_choice) -> None:
    message = llm.bind_tools([magic_function, get_weather], tool_choice=tool_choice).invoke(
        QUESTION)
    assert message.content == ""
    assert message.response_metadata["finish_reason"] == "tool_calls"
    [call] = message.tool_calls
    if tool_choice == "magic_function":
        assert call["name"] == "magic_function"
    assert_args_match_the_schema(call)  # whichever of the two tools was called
    if call["name"] == "magic_function":
        assert call["args"] == {"input": 3}
    assert call["id"].startswith("call_")


def test_named_tool_choice_wins_over_the_question(llm: ChatModelPlug) -> None:
    message = llm.bind_tools([magic_function, get_weather], tool_choice="get_weather").invoke(
        QUESTION)
    [call] = message.tool_calls
    assert call["name"] == "get_weather"
    assert_args_match_the_schema(call)


def test_auto_gives_a_call_or_an_answer_never_raw_json(llm: ChatModelPlug) -> None:
    for prompt in (QUESTION, "Say hello."):
        message = llm.bind_tools([magic_function], tool_choice="auto").invoke(prompt)
        if message.tool_calls:
            assert message.tool_calls[0]["name"] == "magic_function"
            assert message.content == ""
        else:
            assert message.content and not message.content.lstrip().startswith("{")


def test_tool_choice_none_answers_in_text(llm: ChatModelPlug) -> None:
    message = llm.bind_tools([magic_function], tool_choice="none").invoke(
        "What is the capital of France? Answer in one sentence.")
    assert message.tool_calls == [] and "Paris" in message.content


def test_streamed_tool_call_assembles_into_tool_calls(llm: ChatModelPlug) -> None:
    full = None
    for chunk in llm.bind_tools([magic_function], tool_choice="any").stream(QUESTION):
        full = chunk if full is None else full + chunk
    assert full.tool_calls[0]["name"] == "magic_function"
    assert full.tool_calls[0]["args"] == {"input": 3}
    assert full.usage_metadata["output_tokens"] > 0


async def test_async_tool_call(llm: ChatModelPlug) -> None:
    message = await llm.bind_tools([magic_function], tool_choice="any").ainvoke(QUESTION)
    assert message.tool_calls[0]["args"] == {"input": 3}


def test_tool_round_trip_leaves_the_conversation_as_it_was(llm: ChatModelPlug) -> None:
    bound = llm.bind_tools([magic_function], tool_choice="any")
    call = bound.invoke(QUESTION)
    history = [HumanMessage(QUESTION), call,
               ToolMessage(str(magic_function(**call.tool_calls[0]["args"])),
                           tool_call_id=call.tool_calls[0]["id"])]
    snapshot = [m.model_copy(deep=True) for m in history]
    answer = llm.invoke(history)  # tools unbound: the model answers from the tool result
    assert isinstance(answer, AIMessage) and answer.content
    assert history == snapshot


@pytest.mark.parametrize("bound", ["no tools", "tool_choice none"])
def test_earlier_tool_calls_and_results_reach_the_prompt(llm: ChatModelPlug, bound: str) -> None:
    history = [HumanMessage(QUESTION),
               AIMessage("", tool_calls=[{"name": "magic_function", "args": {"input": 3},
                                          "id": "call_1"}]),
               ToolMessage("5", tool_call_id="call_1")]
    model = llm if bound == "no tools" else llm.bind_tools([magic_function], tool_choice="none")
    answer = model.invoke(history)
    # The prompt the template rendered: SmolLM2's template knows no tools, so the call is the
    # assistant's JSON and the result a user turn (a raw "tool" turn or an empty assistant turn
    # would lose them).
    backend = llm.backend
    lm = backend._loaded().model
    tokens = backend._chat_tokens(lm, ChatRequest(messages=to_openai_messages(history)),
                                  with_tools=False)
    prompt = lm.detokenize(tokens, special=True).decode()
    assert ('<|im_start|>assistant\n{"name": "magic_function", "arguments": {"input": 3}}'
            '<|im_end|>') in prompt
    assert "<|im_start|>user\nResult of magic_function: 5<|im_end|>" in prompt
    assert "<|im_start|>tool" not in prompt
    assert answer.usage_metadata["input_tokens"] == len(tokens)  # this prompt was the one sent


def test_parallel_tool_calls_is_accepted(llm: ChatModelPlug) -> None:
    # One call per turn honours parallel_tool_calls=False (and allows True).
    for parallel in (False, True):
        message = llm.bind_tools([magic_function], tool_choice="any",
                                 parallel_tool_calls=parallel).invoke(QUESTION)
        assert message.tool_calls[0]["args"] == {"input": 3}


def test_unknown_tool_choice_is_refused_with_the_bound_names(llm: ChatModelPlug) -> None:
    with pytest.raises(ValueError, match=r"tool_choice 'nope' names no tool given. Tools: "
                                         r"\['magic_function'\]"):
        llm.bind_tools([magic_function], tool_choice="nope")


class Movie(BaseModel):
    """A film."""

    title: str = Field(description="The film's title")
    year: int = Field(description="Release year")


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_validates(llm: ChatModelPlug, method: str) -> None:
    movie = llm.with_structured_output(Movie, method=method).invoke("Name a famous film.")
    assert isinstance(movie, Movie) and movie.title and isinstance(movie.year, int)


def test_sixteen_threads_on_one_model_all_get_correct_answers(llm: ChatModelPlug) -> None:
    expected = llm.invoke("What is the capital of France? Answer in one sentence.").content
    tool_expected = {"input": 3}
    results: list[object] = [None] * 16
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            if i % 2:
                results[i] = llm.bind_tools([magic_function], tool_choice="any").invoke(
                    QUESTION).tool_calls[0]["args"]
            else:
                results[i] = llm.invoke(
                    "What is the capital of France? Answer in one sentence.").content
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [tool_expected if i % 2 else expected for i in range(16)]


def test_unload_frees_the_cache_entry_and_the_next_call_reloads() -> None:
    model = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=8, n_ctx=512)
    model.invoke("Hi")
    key = model.backend._load_key()
    assert key in loaded_keys()
    first = model.backend._loaded().model
    assert modelplug.unload(key) == 1
    assert key not in loaded_keys()
    model.invoke("Hi")
    assert model.backend._loaded().model is not first
    assert modelplug.unload(key) == 1


def test_embeddings_use_the_chat_models_weights(smollm2_path: Path) -> None:
    import llama_cpp
    from llama_index.embeddings.modelplug import ModelPlugEmbedding
    from llama_index.llms.modelplug import ModelPlug

    # n_ctx=1024: an entry of its own, so unloading it below leaves the other tests' model be.
    chat = ChatModelPlug(model="llamacpp:smollm2", n_ctx=1024, temperature=0, max_tokens=24)
    embeddings = ModelPlugEmbeddings(model="llamacpp:smollm2", n_ctx=1024)
    index_llm = ModelPlug(model="llamacpp:smollm2", n_ctx=1024)
    index_embedding = ModelPlugEmbedding(model="llamacpp:smollm2", n_ctx=1024)
    answer = chat.invoke(PARIS).content
    texts = ["The cat sat.", "A cat was sitting on the mat.", "Stock prices fell.",
             "word " * 600]  # the last is cut at n_batch tokens, and decoded on its own
    vectors = embeddings.embed_documents(texts)

    entry = chat.backend._loaded()
    for other in (embeddings, index_llm, index_embedding):
        assert other.backend._loaded() is entry
    # The embedding context runs on the chat model's own llama_model: one copy of the weights.
    assert entry.companions["embedding"].ctx.model is entry.model._model
    key = chat.backend._load_key()
    # ...and one cache entry for this file and n_ctx (no separate embedding-mode load).
    assert [k for k in loaded_keys() if str(smollm2_path.resolve()) in k and 1024 in k] == [key]

    reference = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=1024, verbose=False,
                                embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    expected = reference.embed(texts, normalize=True)
    reference.close()
    for got, want in zip(vectors, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    assert index_embedding.get_text_embedding(texts[0]) == pytest.approx(vectors[0], abs=1e-6)
    assert chat.invoke(PARIS).content == answer  # the chat context was left as it was

    assert modelplug.unload(key) == 1  # the entry, its embedding context with it
    assert key not in loaded_keys()
    assert embeddings.embed_query(texts[0]) == pytest.approx(vectors[0], abs=1e-6)
    assert chat.backend._loaded() is not entry
    assert modelplug.unload(key) == 1

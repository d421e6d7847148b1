"""Tools, structured output, the shared weights cache and concurrency on the real SmolLM2 GGUF."""

from __future__ import annotations

import threading

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import BaseModel, Field

import modelplug
from langchain_modelplug import ChatModelPlug
from modelplug.weights import loaded_keys

QUESTION = "What is the value of magic_function(3)?"


def magic_function(input: int) -> int:
    """Applies a magic function to an input."""
    return input + 2


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny in {city}"


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
    assert call["name"] in ("magic_function", "get_weather")
    if call["name"] == "magic_function":
        assert call["args"] == {"input": 3}
        assert isinstance(call["args"]["input"], int)
    assert call["id"].startswith("call_")


def test_named_tool_choice_wins_over_the_question(llm: ChatModelPlug) -> None:
    message = llm.bind_tools([magic_function, get_weather], tool_choice="get_weather").invoke(
        QUESTION)
    [call] = message.tool_calls
    assert call["name"] == "get_weather"
    assert isinstance(call["args"]["city"], str)


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


def test_unknown_tool_choice_is_refused_with_the_bound_names(llm: ChatModelPlug) -> None:
    with pytest.raises(ValueError, match=r"tool_choice 'nope' names no bound tool. Bound tools: "
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

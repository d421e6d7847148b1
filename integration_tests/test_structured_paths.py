"""One constrained path: every structured-output entry point, on both in-process backends.

A schema using every supported feature (bounded strings, a pattern, integer and number bounds,
enum, const, an array with item bounds, a nested object behind $defs/$ref, anyOf, required
fields, closed objects) goes through LangChain ``with_structured_output`` (json_schema,
function_calling, json_mode, include_raw), LlamaIndex ``structured_predict`` /
``astructured_predict`` / ``stream_structured_predict`` / ``as_structured_llm``, a named tool
call, and ``modelplug serve``'s ``response_format``; every answer is valid for the schema, and the
json_schema paths, which send the same request, give the same answer. Also the issue's examples
(Alice is 30) and the budget's end raised as OutputTruncatedError instead of a partial object.

Reason, then constrain: no thinking model exists offline, so SmolLM2 is made to think with a
chat template whose generation prompt opens ``<think>`` (as DeepSeek-R1's does), or with the
``;thinking`` flag (the model opens the tag itself, as Qwen3 does); its reasoning runs free up to
``thinking_budget`` tokens and only the answer after ``</think>`` is constrained.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import openai
import pytest
from fakes.server import LoopbackServer
from langchain_core.messages import AIMessage
from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.llms.modelplug import ModelPlug
from pydantic import BaseModel, Field

from langchain_modelplug import ChatModelPlug
from modelplug import (
    ChatRequest,
    ConfigurationError,
    OutputTruncatedError,
    UnsupportedSchemaError,
    create_backend,
)
from modelplug.backends import structured
from modelplug.profile import read_gguf_info
from modelplug.server import create_app

ASK = "Alice is 30 years old and lives in Paris. She is an admin, code AB, tags: x."


class Address(BaseModel):
    city: str = Field(max_length=20, description="The city the person lives in")


class Record(BaseModel):
    """A person's record."""

    name: str = Field(min_length=1, max_length=20, description="The person's first name")
    age: int = Field(ge=0, le=120, description="Age in years")
    score: float = Field(ge=0, le=10)
    role: Literal["admin", "user"]
    kind: Literal["person"]
    code: str = Field(pattern=r"^[A-Z]{2}$")
    tags: list[Annotated[str, Field(max_length=8)]] = Field(min_length=1, max_length=2)
    address: Address
    nickname: str | None = Field(max_length=10)


SCHEMA = Record.model_json_schema()


class Person(BaseModel):
    name: str
    age: int


def valid(value: Any) -> dict[str, Any]:
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    jsonschema.validate(data, SCHEMA)
    return data


@pytest.fixture(scope="module", params=["llamacpp", "hf"])
def model_string(request: pytest.FixtureRequest, smollm2_path: Path) -> str:
    if request.param == "llamacpp":
        return "llamacpp:smollm2"
    import torch

    torch.set_num_threads(1)
    return f"hf:{request.getfixturevalue('smollm2_hf_path')}"


@pytest.fixture(scope="module")
def chat(model_string: str) -> ChatModelPlug:
    return ChatModelPlug(model=model_string, temperature=0)


@pytest.fixture(scope="module")
def llm(model_string: str) -> ModelPlug:
    return ModelPlug(model=model_string, temperature=0)


def test_the_schema_uses_every_supported_feature() -> None:
    text = json.dumps(SCHEMA)
    for keyword in ("maxLength", "minLength", "pattern", "minimum", "maximum", "enum", "const",
                    "minItems", "maxItems", "$ref", "$defs", "anyOf", "required"):
        assert f'"{keyword}"' in text, keyword


def test_every_path_gives_a_valid_answer(chat: ChatModelPlug, llm: ModelPlug) -> None:
    answers = {
        "langchain json_schema": chat.with_structured_output(
            Record, method="json_schema").invoke(ASK),
        "langchain json_schema dict": chat.with_structured_output(
            SCHEMA, method="json_schema").invoke(ASK),
        "langchain include_raw": chat.with_structured_output(
            Record, method="json_schema", include_raw=True).invoke(ASK)["parsed"],
        "langchain function_calling": chat.with_structured_output(
            Record, method="function_calling").invoke(ASK),
        "llama_index structured_predict": llm.structured_predict(
            Record, PromptTemplate("{text}"), text=ASK),
        "llama_index astructured_predict": asyncio.run(llm.astructured_predict(
            Record, PromptTemplate("{text}"), text=ASK)),
        "llama_index stream_structured_predict": list(llm.stream_structured_predict(
            Record, PromptTemplate("{text}"), text=ASK))[-1],
        "llama_index as_structured_llm": Record.model_validate_json(
            llm.as_structured_llm(Record).chat([ChatMessage(role="user", content=ASK)])
            .message.content),
    }
    data = {path: valid(answer) for path, answer in answers.items()}
    # Paths that send the same request get the same answer (one constrained path); the
    # frameworks word the schema a little differently, so each is compared with itself.
    for group in ("langchain json_schema", "llama_index"):
        same = [d for p, d in data.items() if p.startswith(group) and "dict" not in p]
        assert all(d == same[0] for d in same), (group, data)


def test_json_mode_answers_a_json_object(chat: ChatModelPlug) -> None:
    answer = chat.with_structured_output(method="json_mode").invoke(
        "Answer in JSON: what is the name of the person in 'Alice is 30'?")
    assert isinstance(answer, dict) and answer


def test_a_named_tool_call_follows_the_schema(chat: ChatModelPlug) -> None:
    tool = {"type": "function", "function": {"name": "record", "description": "Store a record",
                                             "parameters": SCHEMA}}
    message = chat.bind_tools([tool], tool_choice="record").invoke(ASK)
    assert isinstance(message, AIMessage) and message.tool_calls[0]["name"] == "record"
    valid(message.tool_calls[0]["args"])


def test_the_server_response_format_gives_the_same_answer(chat: ChatModelPlug) -> None:
    server = LoopbackServer(create_app(chat.backend, api_key="")).start()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        response = client.chat.completions.create(
            model="served", messages=[{"role": "user", "content": ASK}], temperature=0,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "Record", "schema": SCHEMA}})
    finally:
        server.stop()
    served = valid(json.loads(response.choices[0].message.content))
    direct = chat.backend.chat(ChatRequest(
        [{"role": "user", "content": ASK}], temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "Record",
                                                                "schema": SCHEMA}}))
    assert served == json.loads(direct.text)


@pytest.mark.parametrize("stream", [False, True])
def test_the_server_refuses_an_unenforceable_schema_with_a_400(chat: ChatModelPlug,
                                                                stream: bool) -> None:
    """The schema is checked before anything is generated or sent: a 400 naming the keyword,
    streamed or not (never a 200 whose stream then fails)."""
    schema = {"type": "object", "properties": {"ids": {
        "type": "array", "items": {"type": "integer"}, "uniqueItems": True}}}
    server = LoopbackServer(create_app(chat.backend, api_key="")).start()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="served", messages=[{"role": "user", "content": ASK}], stream=stream,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "Ids", "schema": schema}})
    finally:
        server.stop()
    error = caught.value.body
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert "uniqueItems" in error["message"] and error["code"] == "UnsupportedSchemaError"


def test_the_issue_examples_answer_alice_30(chat: ChatModelPlug, llm: ModelPlug) -> None:
    from_llama_index = llm.structured_predict(
        Person, PromptTemplate("Extract the person: {text}"), text="Alice is 30 years old.")
    from_langchain = chat.with_structured_output(Person, method="json_schema").invoke(
        "Extract the person: Alice is 30 years old.")
    assert from_llama_index == from_langchain == Person(name="Alice", age=30)


def test_a_model_that_does_not_think_answers_at_once(chat: ChatModelPlug) -> None:
    raw = chat.with_structured_output(Person, method="json_schema", include_raw=True).invoke(
        "Extract the person: Alice is 30 years old.")["raw"]
    assert raw.content.startswith("{") and "reasoning_content" not in raw.additional_kwargs


def test_an_integer_bound_holds(chat: ChatModelPlug) -> None:
    schema = {"title": "N", "type": "object", "required": ["n"],
              "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}}}
    answer = chat.with_structured_output(schema, method="json_schema").invoke(
        "Answer with n = 1000.")
    assert 1 <= answer["n"] <= 9


def test_a_cut_answer_is_an_error_naming_max_tokens(model_string: str) -> None:
    short = ChatModelPlug(model=model_string, temperature=0, max_tokens=5)
    with pytest.raises(OutputTruncatedError, match="max_tokens=5"):
        short.with_structured_output(Record, method="json_schema").invoke(ASK)
    with pytest.raises(OutputTruncatedError, match="max_tokens=5"):
        short.with_structured_output(Record, method="function_calling").invoke(ASK)
    raw = short.with_structured_output(Record, method="json_schema", include_raw=True).invoke(ASK)
    assert raw["parsed"] is None and isinstance(raw["parsing_error"], OutputTruncatedError)
    chunks = short.with_structured_output(SCHEMA, method="json_schema").stream(ASK)
    with pytest.raises(OutputTruncatedError):
        list(chunks)
    llm = ModelPlug(model=model_string, temperature=0, max_tokens=5)
    with pytest.raises(OutputTruncatedError, match="max_tokens"):
        llm.structured_predict(Record, PromptTemplate("{text}"), text=ASK)
    with pytest.raises(OutputTruncatedError):
        list(llm.stream_structured_predict(Record, PromptTemplate("{text}"), text=ASK))


def test_an_unenforceable_schema_is_refused_before_generation(chat: ChatModelPlug) -> None:
    schema = {"title": "Ids", "type": "object", "properties": {"ids": {
        "type": "array", "items": {"type": "integer"}, "uniqueItems": True}}}
    with pytest.raises(UnsupportedSchemaError, match="uniqueItems") as caught:
        chat.with_structured_output(schema, method="json_schema").invoke(ASK)
    assert caught.value.keyword == "uniqueItems"


def test_a_named_chat_format_is_constrained_by_the_same_grammar() -> None:
    """chat_format= (llama-cpp-python's own chat handlers) takes the same constraint: bounds hold
    and the schema is told, where its own converter ignored integer bounds."""
    chat = ChatModelPlug(model="llamacpp:smollm2", chat_format="chatml", temperature=0,
                         max_tokens=40)
    schema = {"title": "P", "type": "object", "required": ["name", "age"], "properties": {
        "name": {"type": "string"}, "age": {"type": "integer", "minimum": 1, "maximum": 9}}}
    answer = chat.with_structured_output(schema, method="json_schema").invoke(
        "Extract the person: Alice is 30 years old.")
    assert answer["name"] == "Alice" and 1 <= answer["age"] <= 9


# -- reason, then constrain ---------------------------------------------------------------------

#: Reasoning tokens before the answer (small: the test model never closes its thinking itself).
BUDGET = 24
EXTRACT = "Extract the person: Alice is 30 years old."


@pytest.fixture(scope="module")
def thinking_template(smollm2_path: Path) -> str:
    """SmolLM2's own chat template, its generation prompt opening ``<think>``."""
    own = read_gguf_info(smollm2_path).chat_template
    opened = own.replace("'<|im_start|>assistant\n' }}", "'<|im_start|>assistant\n<think>\n' }}")
    assert opened != own
    return opened


def _within_budget(usage: Any, schema: dict[str, Any], opened: bool = True) -> None:
    """Reasoning and answer took no more than the reasoning budget, the tags and the answer."""
    reasoning = structured.Reasoning(opened=opened, budget=BUDGET)
    assert usage <= BUDGET + reasoning.overhead + structured.output_bound(schema)


def test_a_thinking_model_reasons_then_answers_in_the_schema(
        model_string: str, thinking_template: str) -> None:
    chat = ChatModelPlug(model=model_string, temperature=0, chat_template=thinking_template,
                         thinking_budget=BUDGET)
    schema = {"title": "P", "type": "object", "required": ["name", "age"], "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150}}}
    result = chat.with_structured_output(schema, method="json_schema", include_raw=True).invoke(
        EXTRACT)
    raw = result["raw"]
    assert result["parsing_error"] is None and result["parsed"] == {"name": "Alice", "age": 30}
    assert raw.additional_kwargs["reasoning_content"].strip()
    assert "</think>" not in raw.content and raw.content.startswith("{")
    _within_budget(raw.usage_metadata["output_tokens"], schema)

    streamed = list(chat.with_structured_output(schema, method="json_schema").stream(EXTRACT))
    assert streamed[-1] == {"name": "Alice", "age": 30}
    tool = chat.with_structured_output(schema, method="function_calling", include_raw=True) \
        .invoke(EXTRACT)
    assert tool["raw"].additional_kwargs["reasoning_content"].strip()
    jsonschema.validate(tool["parsed"], schema)

    llm = ModelPlug(model=model_string, temperature=0, chat_template=thinking_template,
                    thinking_budget=BUDGET)
    assert llm.structured_predict(Person, PromptTemplate("Extract the person: {text}"),
                                  text="Alice is 30 years old.") == Person(name="Alice", age=30)


def test_a_thinking_model_that_opens_its_own_tag(model_string: str) -> None:
    """The ``;thinking`` flag: the grammar writes ``<think>`` first, as Qwen3 does itself."""
    backend = create_backend(f"{model_string};tools,thinking", thinking_budget=BUDGET)
    schema = {"type": "object", "required": ["age"], "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 150}}}
    response = backend.chat(ChatRequest(
        [{"role": "user", "content": EXTRACT}], temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "A", "schema": schema}}))
    assert response.reasoning.strip() and response.finish_reason == "stop"
    jsonschema.validate(json.loads(response.text), schema)
    _within_budget(response.usage.output_tokens, schema, opened=False)


def test_reasoning_false_answers_at_once(model_string: str, thinking_template: str) -> None:
    chat = ChatModelPlug(model=model_string, temperature=0, chat_template=thinking_template,
                         reasoning=False)
    raw = chat.with_structured_output(Person, method="json_schema", include_raw=True).invoke(
        EXTRACT)["raw"]
    assert raw.content.startswith("{") and "reasoning_content" not in raw.additional_kwargs


def test_bad_reasoning_settings_are_refused_naming_them(model_string: str) -> None:
    with pytest.raises(ConfigurationError, match=r"thinking_budget.*got 0"):
        ChatModelPlug(model=model_string, thinking_budget=0)
    with pytest.raises(ConfigurationError, match="chat_template must be a Jinja"):
        ChatModelPlug(model=model_string, chat_template=["not", "a", "template"])
    if model_string.startswith("llamacpp"):
        with pytest.raises(ConfigurationError, match="pass one of them"):
            ChatModelPlug(model=model_string, chat_template="{{ x }}", chat_format="chatml")

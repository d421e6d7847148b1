"""ModelPlug: a LlamaIndex FunctionCallingLLM over every modelplug backend."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Generator, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW, DEFAULT_NUM_OUTPUTS
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.prompts import PromptTemplate
from llama_index.core.types import Model, PydanticProgramMode
from llama_index.llms.modelplug._convert import (
    astream_steps,
    completion_from_chat,
    stream_steps,
    to_chat_response,
    to_completion_response,
    to_openai_messages,
)
from llama_index.llms.modelplug._tools import (
    first_tool_call_only,
    tool_selections,
    tool_turn_messages,
    tools_and_choice,
)
from llama_index.llms.modelplug.backend_fields import BackendFields

from modelplug import ChatRequest, CompletionRequest
from modelplug.backends.structured import check_finished
from modelplug.types import request_fields

if TYPE_CHECKING:
    from llama_index.core.program.utils import FlexibleModel
    from llama_index.core.tools.types import BaseTool

#: Per-call keyword arguments LlamaIndex passes that are not request fields.
_DROPPED = ("formatted", "strict", "tool_required")


class ModelPlug(BackendFields, FunctionCallingLLM):
    """LlamaIndex LLM over any modelplug provider: cloud SDKs, local servers, in-process models.

    Setup:
        Install the package with the extra of the backend you use:

        .. code-block:: bash

            pip install llama-index-llms-modelplug "modelplug[llamacpp]"  # or [openai], ...

    Key init args — model:
        model: str | None
            ``"provider:model_id"`` (``"anthropic:claude-sonnet-4-6"``, ``"ollama:qwen3.5:9b"``,
            ``"llamaserver:smollm2"``, ``"llamacpp:smollm2"``), a catalog member
            (``LlamaCppModel.SMOLLM2``, stored as its ``"provider:model_id"``), a catalog name,
            or None for the first model available locally (never a cloud, never a download).
        **provider kwargs
            Provider-specific settings, checked against the provider's row (an unknown one is a
            TypeError naming the accepted ones): ``model_path``, ``n_ctx``, ``n_gpu_layers``,
            ``chat_format``, ``chat_handler`` for llamacpp; ``base_url`` for local servers.

    Key init args — completion params:
        temperature, max_tokens, top_p, stop, seed: sampling, as the provider understands them.
        reasoning: bool | None
            Switch reasoning on/off where the model has the switch.
        context_window: int | None
            Overrides the context window the profile reports (``metadata.context_window``).
        raw_completion: bool
            ``complete`` sends the prompt as-is (no chat template) where the backend has raw
            completion (llamacpp); by default ``complete`` is a one-message chat.

    Key init args — client params:
        timeout, max_retries: networked providers only (in-process: TypeError).
        api_key: SecretStr | None (defaults to the provider's environment variable).
        base_url: str | None

    Instantiate:
        .. code-block:: python

            from llama_index.core import Settings
            from llama_index.llms.modelplug import ModelPlug

            llm = ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=64)
            Settings.llm = llm

    Chat and complete:
        .. code-block:: python

            from llama_index.core.llms import ChatMessage

            llm.chat([ChatMessage(role="user", content="What is the capital of France?")])
            llm.complete("What is the capital of France?").text
            # 'The capital of France is Paris.'

    Stream and async:
        .. code-block:: python

            for step in llm.stream_chat(messages):
                print(step.delta, end="")
            await llm.achat(messages)
            async for step in await llm.astream_chat(messages):
                ...

    Tool calling:
        .. code-block:: python

            from llama_index.core.tools import FunctionTool

            tool = FunctionTool.from_defaults(fn=magic_function)
            response = llm.chat_with_tools([tool], user_msg="magic_function(3)?",
                                           tool_required=True)
            llm.get_tool_calls_from_response(response)
            # [ToolSelection(tool_id='call_...', tool_name='magic_function',
            #                tool_kwargs={'input': 3})]

        ``tool_choice`` takes ``"auto"``, ``"none"``, ``"required"`` or a tool name; agents
        (``FunctionAgent``) work as with any FunctionCallingLLM, streaming included.

    Structured output:
        .. code-block:: python

            from pydantic import BaseModel

            class City(BaseModel):
                name: str
                country: str

            llm.structured_predict(City, PromptTemplate("Paris is in {country}."), country="X")
            llm.as_structured_llm(City).chat(messages)

        Uses the backend's native ``json_schema`` response format (a grammar in-process) when
        the model supports structured output; a forced tool call otherwise.

    Token usage and reasoning:
        ``response.additional_kwargs`` holds ``prompt_tokens``, ``completion_tokens`` and
        ``total_tokens`` (``raw["usage"]`` too, for TokenCountingHandler); reasoning arrives as
        a ThinkingBlock, and in streams as ``additional_kwargs["thinking_delta"]``.
    """

    temperature: float | None = Field(default=None, description="Sampling temperature.")
    max_tokens: int | None = Field(default=None, description="The most tokens to generate.")
    top_p: float | None = Field(
        default=None, description="Nucleus sampling: the probability mass to sample from.")
    stop: list[str] | None = Field(
        default=None, description="Sequences that end the generation.")
    seed: int | None = Field(
        default=None, description="Sampling seed, where the provider takes one.")
    reasoning: bool | None = Field(
        default=None,
        description="True/False switches reasoning on/off where the model has the switch.")
    context_window: int | None = Field(
        default=None, description="Overrides the context window from the model's profile.")
    raw_completion: bool = Field(
        default=False, description="complete() sends the prompt without a chat template.")

    @classmethod
    def class_name(cls) -> str:
        return "ModelPlug"

    @property
    def metadata(self) -> LLMMetadata:
        """From the model's profile: catalog data and local file headers, never the network."""
        profile = self._backend.profile()
        return LLMMetadata(
            context_window=self.context_window or profile.max_input_tokens
            or DEFAULT_CONTEXT_WINDOW,
            num_output=self.max_tokens or profile.max_output_tokens or DEFAULT_NUM_OUTPUTS,
            is_chat_model=True,
            is_function_calling_model=profile.tool_calling is not False,
            model_name=self.model or str(self._backend.ref),
            system_role=MessageRole.SYSTEM,
        )

    # -- requests -------------------------------------------------------------------------------

    def _request(self, messages: Sequence[ChatMessage],
                 kwargs: dict[str, Any]) -> tuple[ChatRequest, bool]:
        """The neutral request, and whether only one tool call may come back."""
        fields, extra = request_fields(self, kwargs)  # the caller's dict stays as it was
        required = bool(extra.get("tool_required"))
        for name in _DROPPED:
            extra.pop(name, None)
        tools = fields.pop("tools", None)
        choice = fields.pop("tool_choice", None)
        if tools:
            fields["tools"], fields["tool_choice"] = tools_and_choice(tools, choice, required)
        else:
            fields.pop("parallel_tool_calls", None)
        single = fields.get("parallel_tool_calls") is False
        return ChatRequest(messages=to_openai_messages(messages), extra=extra, **fields), single

    def _completion_request(self, prompt: str, formatted: bool,
                            kwargs: dict[str, Any]) -> CompletionRequest:
        fields, extra = request_fields(self, kwargs, completion=True)
        if not formatted:
            prompt = self.completion_to_prompt(prompt)
        return CompletionRequest(prompt=prompt, extra=extra, **fields)

    @property
    def _provider(self) -> str:
        return self._backend.ref.provider

    # -- chat -----------------------------------------------------------------------------------
    # The public methods carry LlamaIndex's callback decorators; complete() and its twins call the
    # undecorated _chat etc. (as llama-index-llms-openai does), so one call is one LLM event and
    # TokenCountingHandler counts it once.

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, **kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await self._achat(messages, **kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat(messages, **kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage],
                           **kwargs: Any) -> ChatResponseAsyncGen:
        return self._astream_chat(messages, **kwargs)

    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request, single = self._request(messages, kwargs)
        response = to_chat_response(self._backend.chat(request), self._provider)
        return first_tool_call_only(response) if single else response

    async def _achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request, single = self._request(messages, kwargs)
        response = to_chat_response(await self._backend.achat(request), self._provider)
        return first_tool_call_only(response) if single else response

    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        request, single = self._request(messages, kwargs)

        def gen() -> ChatResponseGen:  # the backend is called on the first step, not before
            yield from stream_steps(self._backend.stream(request), self._provider, single)

        return gen()

    def _astream_chat(self, messages: Sequence[ChatMessage],
                      **kwargs: Any) -> ChatResponseAsyncGen:
        request, single = self._request(messages, kwargs)

        async def gen() -> ChatResponseAsyncGen:
            async for step in astream_steps(self._backend.astream(request), self._provider,
                                            single):
                yield step

        return gen()

    # -- complete -------------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False,
                 **kwargs: Any) -> CompletionResponse:
        if self.raw_completion:
            request = self._completion_request(prompt, formatted, kwargs)
            return to_completion_response(self._backend.complete(request), self._provider)
        return completion_from_chat(self._chat(_as_messages(prompt), **kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponse:
        if self.raw_completion:
            request = self._completion_request(prompt, formatted, kwargs)
            return to_completion_response(await self._backend.acomplete(request),
                                          self._provider)
        return completion_from_chat(await self._achat(_as_messages(prompt), **kwargs))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponseGen:
        if self.raw_completion:
            request = self._completion_request(prompt, formatted, kwargs)

            def raw_gen() -> CompletionResponseGen:
                for step in stream_steps(self._backend.stream_complete(request), self._provider):
                    yield completion_from_chat(step)

            return raw_gen()
        steps = self._stream_chat(_as_messages(prompt), **kwargs)

        def gen() -> CompletionResponseGen:
            for step in steps:
                yield completion_from_chat(step)

        return gen()

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        if self.raw_completion:
            request = self._completion_request(prompt, formatted, kwargs)

            async def raw_gen() -> CompletionResponseAsyncGen:
                async for step in astream_steps(self._backend.astream_complete(request),
                                                self._provider):
                    yield completion_from_chat(step)

            return raw_gen()
        steps = self._astream_chat(_as_messages(prompt), **kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            async for step in steps:
                yield completion_from_chat(step)

        return gen()

    # -- tools ----------------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Chat kwargs for a turn with tools. ``chat_history`` is copied, never appended to."""
        out: dict[str, Any] = {"messages": tool_turn_messages(user_msg, chat_history), **kwargs}
        if tools:
            out["tools"], out["tool_choice"] = tools_and_choice(tools, tool_choice, tool_required)
            out["parallel_tool_calls"] = allow_parallel_tool_calls
        return out

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        return response if allow_parallel_tool_calls else first_tool_call_only(response)

    def get_tool_calls_from_response(
        self,
        response: ChatResponse,
        error_on_no_tool_call: bool = True,
        **kwargs: Any,
    ) -> list[ToolSelection]:
        """The response's ToolCallBlocks as ToolSelections (partial JSON arguments parsed)."""
        return tool_selections(response, error_on_no_tool_call)

    # -- structured output ----------------------------------------------------------------------

    def _native_structured(self) -> bool:
        return (self.pydantic_program_mode == PydanticProgramMode.DEFAULT
                and self._backend.profile().structured_output is not False)

    @staticmethod
    def _schema_kwargs(llm_kwargs: dict[str, Any] | None,
                       output_cls: type[Model]) -> dict[str, Any]:
        kwargs = dict(llm_kwargs or {})
        kwargs.pop("tool_choice", None)
        name = re.sub(r"[^a-zA-Z0-9_-]", "_", output_cls.__name__)[:64]
        kwargs["response_format"] = {"type": "json_schema", "json_schema": {
            "name": name, "schema": output_cls.model_json_schema(), "strict": False}}
        return kwargs

    @staticmethod
    def _forced_tool_kwargs(llm_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        kwargs = dict(llm_kwargs or {})
        kwargs.setdefault("tool_choice", "required")
        return kwargs

    def structured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                           llm_kwargs: dict[str, Any] | None = None,
                           **prompt_args: Any) -> Model:
        """An instance of ``output_cls``: native json_schema output where the model has it."""
        if not self._native_structured():
            return super().structured_predict(
                output_cls, prompt, llm_kwargs=self._forced_tool_kwargs(llm_kwargs),
                **prompt_args)
        messages = self._extend_messages(prompt.format_messages(**prompt_args))
        response = self.chat(messages, **self._schema_kwargs(llm_kwargs, output_cls))
        return _parse(output_cls, response)

    async def astructured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                                  llm_kwargs: dict[str, Any] | None = None,
                                  **prompt_args: Any) -> Model:
        if not self._native_structured():
            return await super().astructured_predict(
                output_cls, prompt, llm_kwargs=self._forced_tool_kwargs(llm_kwargs),
                **prompt_args)
        messages = self._extend_messages(prompt.format_messages(**prompt_args))
        response = await self.achat(messages, **self._schema_kwargs(llm_kwargs, output_cls))
        return _parse(output_cls, response)

    def _structured_stream_call(
        self, output_cls: type[Model], prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any,
    ) -> Generator[Model | list[Model] | FlexibleModel | list[FlexibleModel], None, None]:
        if not self._native_structured():
            return super()._structured_stream_call(
                output_cls, prompt, self._forced_tool_kwargs(llm_kwargs), **prompt_args)
        from llama_index.core.program.streaming_utils import (
            process_streaming_content_incremental,
        )

        messages = self._extend_messages(prompt.format_messages(**prompt_args))
        steps = self.stream_chat(messages, **self._schema_kwargs(llm_kwargs, output_cls))

        def gen() -> Generator[Any, None, None]:
            current = None
            for step in steps:
                _check_finished(step)
                current = process_streaming_content_incremental(step, output_cls, current)
                yield current

        return gen()

    async def _structured_astream_call(
        self, output_cls: type[Model], prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any,
    ) -> AsyncGenerator[Model | list[Model] | FlexibleModel | list[FlexibleModel], None]:
        if not self._native_structured():
            return await super()._structured_astream_call(
                output_cls, prompt, self._forced_tool_kwargs(llm_kwargs), **prompt_args)
        from llama_index.core.program.streaming_utils import (
            process_streaming_content_incremental,
        )

        messages = self._extend_messages(prompt.format_messages(**prompt_args))
        steps = await self.astream_chat(messages, **self._schema_kwargs(llm_kwargs, output_cls))

        async def gen() -> AsyncGenerator[Any, None]:
            current = None
            async for step in steps:
                _check_finished(step)
                current = process_streaming_content_incremental(step, output_cls, current)
                yield current

        return gen()


# -- helpers --------------------------------------------------------------------------------------


def _as_messages(prompt: str) -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.USER, content=prompt)]


def _check_finished(response: ChatResponse) -> None:
    """A structured answer cut by the output budget is an OutputTruncatedError naming
    max_tokens, never a partial object passed off as the answer."""
    raw = response.raw if isinstance(response.raw, dict) else {}
    check_finished(response.message.content or "", raw.get("finish_reason"))


def _parse(output_cls: type[Model], response: ChatResponse) -> Model:
    _check_finished(response)
    text = response.message.content or ""
    try:
        return output_cls.model_validate_json(text)
    except ValueError as exc:
        raise ValueError(
            f"The model's answer does not parse as {output_cls.__name__}: {exc}. "
            f"Answer: {text[:300]!r}"
        ) from exc

"""ChatModelPlug: a LangChain chat model over every modelplug backend."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import (
    LangSmithParams,
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableGenerator, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, SecretStr

from langchain_modelplug._backend_fields import GenerationFields
from langchain_modelplug._convert import (
    llm_output,
    to_ai_chunk,
    to_ai_message,
    to_openai_messages,
)
from modelplug import ChatRequest
from modelplug.backends.structured import check_finished
from modelplug.types import normalise_tool_choice, request_fields

StructuredOutputMethod = Literal["json_schema", "function_calling", "json_mode"]


class ChatModelPlug(GenerationFields, BaseChatModel):
    """Chat model over any modelplug provider: cloud SDKs, local servers, in-process models.

    Setup:
        Install the package with the extra of the backend you use:

        .. code-block:: bash

            pip install "langchain-modelplug[llamacpp]"   # or [openai], [anthropic], [ollama], [hf]

    Key init args — model:
        model: str | None
            ``"provider:model_id"`` (``"anthropic:claude-sonnet-4-6"``, ``"ollama:qwen3.5:9b"``,
            ``"llamacpp:smollm2"``), a catalog member (``LlamaCppModel.SMOLLM2``, stored as its
            ``"provider:model_id"``), a catalog name, or None for the first model available
            locally (never a cloud, never a download).
        **provider kwargs
            Provider-specific settings, checked against the provider's row: ``model_path``,
            ``n_ctx``, ``n_gpu_layers``, ``chat_format``, ``chat_handler``, ``verbose`` for
            llamacpp, and for in-process models serving concurrent callers ``n_parallel``
            (llamacpp: sequences decoded together), ``max_queue`` and ``queue_timeout``
            (back-pressure); ``base_url`` for local servers; ``model_keep_alive_seconds`` for
            ollama.

    Key init args — completion params:
        temperature: float | None
        max_tokens: int | None
        top_p: float | None
        stop: list[str] | None
        seed: int | None

    Key init args — client params:
        timeout: float | None
            Networked providers only, forwarded to the SDK (in-process: TypeError).
        max_retries: int | None
            Networked providers only, the SDK's own retry (in-process: TypeError).
        api_key: SecretStr | None
            Defaults to the provider's documented environment variable.
        base_url: str | None

    Instantiate:
        .. code-block:: python

            from langchain_modelplug import ChatModelPlug

            llm = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=64)

    Invoke:
        .. code-block:: python

            llm.invoke("What is the capital of France? Answer in one sentence.")
            # AIMessage(content='The capital of France is Paris.', usage_metadata={...})

    Stream:
        .. code-block:: python

            for chunk in llm.stream("Count from 1 to 5."):
                print(chunk.content, end="")

    Async:
        .. code-block:: python

            await llm.ainvoke("Hello")
            async for chunk in llm.astream("Hello"):
                ...

    Tool calling:
        .. code-block:: python

            from pydantic import BaseModel

            class GetWeather(BaseModel):
                '''Get the weather in a city.'''
                city: str

            llm_with_tools = llm.bind_tools([GetWeather], tool_choice="any")

    Structured output:
        .. code-block:: python

            class Person(BaseModel):
                name: str
                age: int

            llm.with_structured_output(Person).invoke("Invent a person.")
            # method="json_schema" (default where the backend constrains output),
            # "function_calling" or "json_mode"

    Token usage:
        .. code-block:: python

            llm.invoke("Hello").usage_metadata
            # {'input_tokens': 34, 'output_tokens': 9, 'total_tokens': 43}
    """

    reasoning: bool | None = None
    """True/False switches reasoning on/off where the model supports the switch."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        env = self._backend.spec.api_key_env
        if self.api_key is None and env and os.environ.get(env):
            self.api_key = SecretStr(os.environ[env])  # the key in use, as LangChain models show it
        if self.profile is None:  # BaseChatModel's own hook ran before the backend existed
            self.profile = self._resolve_model_profile()

    # -- identity -------------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "modelplug"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, **self._sampling_params()}

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_modelplug", "chat_models"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        # Local servers document no key variable; a secured one still needs a name to load from.
        spec = self._backend.spec
        return {"api_key": spec.api_key_env or f"{spec.key.upper().replace('-', '_')}_API_KEY"}

    def _resolve_model_profile(self) -> ModelProfile | None:
        return ModelProfile(**self._backend.profile().as_dict())  # type: ignore[typeddict-item]

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        ref = self._backend.ref
        params["ls_provider"] = ref.provider
        params["ls_model_name"] = kwargs.get("model", ref.model_id)
        params["ls_model_type"] = "chat"
        return self._sampling_ls_params(params, stop, kwargs)

    # -- requests -------------------------------------------------------------------------------

    def _sampling_params(self) -> dict[str, Any]:
        return request_fields(self, {})[0]

    def _request(self, messages: list[BaseMessage], stop: list[str] | None,
                 kwargs: dict[str, Any]) -> ChatRequest:
        fields, extra = request_fields(self, kwargs)
        if stop is not None:
            fields["stop"] = stop
        # LangChain's own keys are no provider fields: the stream flag, and the LangSmith
        # tracing keys (ls_structured_output_format from with_structured_output, ...).
        extra = {k: v for k, v in extra.items() if k != "stream" and not k.startswith("ls_")}
        return ChatRequest(messages=to_openai_messages(messages), extra=extra, **fields)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        if self.streaming:  # as ChatOpenAI does: LangChain's own collection of the chunks
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        response = self._backend.chat(self._request(messages, stop, kwargs))
        return ChatResult(generations=[ChatGeneration(
            message=to_ai_message(response, self._backend.ref.provider))],
            llm_output=llm_output(response))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(
                self._astream(messages, stop, run_manager, **kwargs))
        response = await self._backend.achat(self._request(messages, stop, kwargs))
        return ChatResult(generations=[ChatGeneration(
            message=to_ai_message(response, self._backend.ref.provider))],
            llm_output=llm_output(response))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        provider = self._backend.ref.provider
        for chunk in self._backend.stream(self._request(messages, stop, kwargs)):
            generation = ChatGenerationChunk(message=to_ai_chunk(chunk, provider))
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=generation)
            yield generation

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        provider = self._backend.ref.provider
        async for chunk in self._backend.astream(self._request(messages, stop, kwargs)):
            generation = ChatGenerationChunk(message=to_ai_chunk(chunk, provider))
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=generation)
            yield generation

    # -- tools and structured output -----------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (pydantic classes, functions, BaseTools or OpenAI dicts).

        ``tool_choice``: ``"auto"``, ``"none"``, ``"any"``/``"required"``/``True`` (some
        tool must be called), or a tool name (that tool must be called).
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        return self.bind(tools=formatted, tool_choice=normalise_tool_choice(tool_choice, formatted),
                         **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: StructuredOutputMethod | None = None,
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | BaseModel]:
        """Answers parsed into ``schema`` (a pydantic class, TypedDict or JSON schema).

        ``method``: ``"json_schema"`` (constrained output: grammars in-process, the API's
        json_schema response format elsewhere), ``"function_calling"`` (a forced tool call) or
        ``"json_mode"`` (any JSON object; describe the shape in the prompt). The default is
        json_schema where the backend constrains output, function_calling otherwise.
        """
        if kwargs:
            raise ValueError(f"Received unsupported arguments {sorted(kwargs)}.")
        if method is None:
            structured = self._backend.profile().structured_output
            method = "function_calling" if structured is False else "json_schema"
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        # Reported to callbacks (on_chat_model_start options) for tracing, as ChatOpenAI does.
        traced = {"ls_structured_output_format": {
            "kwargs": {"method": method, "strict": strict},
            "schema": convert_to_json_schema(schema) if schema is not None else None}}
        if method == "json_mode":
            llm = self.bind(response_format={"type": "json_object"}, **traced)
            parser: Runnable = PydanticOutputParser(pydantic_object=schema) if is_pydantic \
                else JsonOutputParser()
        elif schema is None:
            raise ValueError(f"schema is required for method={method!r}.")
        elif method == "json_schema":
            json_schema = convert_to_json_schema(schema)
            name = json_schema.get("title", "response")
            llm = self.bind(response_format={"type": "json_schema", "json_schema": {
                "name": name, "schema": json_schema, "strict": bool(strict)}}, **traced)
            parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic \
                else JsonOutputParser()
        elif method == "function_calling":
            tool = convert_to_openai_tool(schema, strict=strict)
            name = tool["function"]["name"]
            llm = self.bind_tools([tool], tool_choice=name, **traced)
            parser = forced_tool_parser(schema)
        else:
            raise ValueError(
                f"Unknown structured output method {method!r}. Use 'json_schema', "
                "'function_calling' or 'json_mode'."
            )
        return structured_runnable(llm, parser, include_raw=include_raw,
                                   max_tokens=self.max_tokens)

    # -- batched generation for in-process backends (hf: one left-padded generate) -------------
    # LangChain's default batch() runs invoke() per input in a thread pool; an in-process model
    # answers a whole batch in one generation instead. Callbacks get one run per input, as with
    # invoke(). Cached, streaming or single-input batches take LangChain's default path.
    # _BatchPlan decides everything; batch and abatch only drive its callbacks and the backend.

    def _batches_natively(self, inputs: Sequence[Any]) -> bool:
        from langchain_core.globals import get_llm_cache

        cache_on = self.cache is not False and (self.cache is not None
                                                or get_llm_cache() is not None)
        return (self._backend.spec.in_process and len(inputs) > 1 and not self.streaming
                and not cache_on and self.rate_limiter is None)

    def batch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False,
              **kwargs: Any) -> list[Any]:
        if not self._batches_natively(inputs):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        from langchain_core.callbacks import CallbackManager

        plan = _BatchPlan(self, inputs, config, kwargs, return_exceptions)
        runs = [run for manager, start in plan.starts(CallbackManager)
                for run in manager.on_chat_model_start(**start)]
        answered = plan.settled
        if answered is None:
            try:
                answered = self._backend.batch(plan.requests)
            except BaseException as exc:
                answered = exc
        outputs = plan.outputs(runs, answered)
        for end, result in plan.ends(runs, outputs):
            end(result)
        return plan.result(outputs)

    async def abatch(self, inputs: list[Any], config: Any = None, *,
                     return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        if not self._batches_natively(inputs):
            return await super().abatch(inputs, config, return_exceptions=return_exceptions,
                                        **kwargs)
        from langchain_core.callbacks import AsyncCallbackManager

        plan = _BatchPlan(self, inputs, config, kwargs, return_exceptions)
        runs = [run for manager, start in plan.starts(AsyncCallbackManager)
                for run in await manager.on_chat_model_start(**start)]
        answered = plan.settled
        if answered is None:
            try:
                answered = await self._backend.abatch(plan.requests)
            except BaseException as exc:
                answered = exc
        outputs = plan.outputs(runs, answered)
        for end, result in plan.ends(runs, outputs):
            await end(result)
        return plan.result(outputs)


class _BatchPlan:
    """One native batch of :class:`ChatModelPlug`, decided once for both drivers (``batch``,
    ``abatch``): each input's messages and request, or the error that refuses it (every item
    is checked alone, so one bad request fails only itself); one chat-model run per input;
    each run's output and how it ends; what the batch returns or raises."""

    def __init__(self, model: ChatModelPlug, inputs: Sequence[Any], config: Any,
                 kwargs: dict[str, Any], return_exceptions: bool) -> None:
        from langchain_core.runnables.config import get_config_list

        self.model = model
        self.return_exceptions = return_exceptions
        self.stop = kwargs.pop("stop", None)
        for key in ("ls_structured_output_format", "structured_output_format"):
            kwargs.pop(key, None)
        self.kwargs = kwargs
        self.configs = get_config_list(config, len(inputs))
        self.items: list[tuple[list[BaseMessage], ChatRequest | Exception]] = []
        for value in inputs:
            messages = model._convert_input(value).to_messages()
            try:
                request = model._request(messages, self.stop, dict(kwargs))
                model.backend.check(request)
            except Exception as exc:
                self.items.append((messages, exc))
            else:
                self.items.append((messages, request))
        #: The requests to generate, in input order, refused items left out.
        self.requests = [r for _, r in self.items if not isinstance(r, Exception)]

    @property
    def settled(self) -> list[Any] | Exception | None:
        """The batch's answer when nothing is to be generated: without return_exceptions the
        first item's refusal (it stops the whole batch), [] when every item was refused;
        None when the backend must answer ``requests``."""
        if not self.return_exceptions:
            refusal = next((r for _, r in self.items if isinstance(r, Exception)), None)
            if refusal is not None:
                return refusal
        return None if self.requests else []

    def starts(self, manager_class: type) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Per input, its callback manager (of ``manager_class``, sync or async) and the
        ``on_chat_model_start`` arguments of its run."""
        model = self.model
        for (messages, _), cfg in zip(self.items, self.configs, strict=True):
            manager = manager_class.configure(cfg.get("callbacks"), model.callbacks,
                                              model.verbose, cfg.get("tags"), model.tags,
                                              cfg.get("metadata"), model.metadata)
            yield manager, {
                "serialized": model._serialized, "messages": [messages],
                "invocation_params": model._get_invocation_params(stop=self.stop,
                                                                  **self.kwargs),
                "options": {"stop": self.stop}, "name": cfg.get("run_name"),
                "run_id": cfg.get("run_id"), "batch_size": 1}

    def outputs(self, runs: list[Any], answered: list[Any] | BaseException) -> list[Any]:
        """Per item, its AIMessage or the exception that failed it: its own refusal, else the
        batch call's error (``answered``) when that failed."""
        from langchain_core.utils.utils import LC_ID_PREFIX

        provider = self.model.backend.ref.provider
        answers = iter(answered) if isinstance(answered, list) else None
        outputs: list[Any] = []
        for (_, request), run in zip(self.items, runs, strict=True):
            if isinstance(request, Exception):
                outputs.append(request)
            elif answers is None:
                outputs.append(answered)
            else:
                message = to_ai_message(next(answers), provider)
                message.id = message.id or f"{LC_ID_PREFIX}-{run.run_id}"
                outputs.append(message)
        return outputs

    @staticmethod
    def ends(runs: list[Any], outputs: list[Any]) -> Iterator[tuple[Callable[[Any], Any], Any]]:
        """How each run ends, as (its run manager's method, the argument): ``on_llm_error``
        with its exception, or ``on_llm_end`` with its answer. Async run managers' methods
        return coroutines for the async driver to await."""
        from langchain_core.outputs import LLMResult

        for run, output in zip(runs, outputs, strict=True):
            if isinstance(output, BaseException):
                yield run.on_llm_error, output
            else:
                yield run.on_llm_end, LLMResult(generations=[[ChatGeneration(message=output)]])

    def result(self, outputs: list[Any]) -> list[Any]:
        """The outputs, or the first error raised: always without return_exceptions, and with
        it for a BaseException that is no Exception (KeyboardInterrupt, cancellation)."""
        first = next((o for o in outputs if isinstance(o, BaseException)), None)
        if first is not None and (not self.return_exceptions or not isinstance(first, Exception)):
            raise first
        return outputs


def forced_tool_parser(schema: dict[str, Any] | type) -> Runnable:
    """The parser of a forced tool call's answer, as BaseChatModel.with_structured_output
    builds it: the first call's arguments, as ``schema`` when it is a pydantic class."""
    if isinstance(schema, type) and is_basemodel_subclass(schema):
        return PydanticToolsParser(tools=[schema], first_tool_only=True)
    return JsonOutputKeyToolsParser(
        key_name=convert_to_openai_tool(schema)["function"]["name"], first_tool_only=True)


def structured_runnable(llm: Runnable, parser: Runnable, *, include_raw: bool,
                        max_tokens: int | Callable[[BaseMessage], int | None] | None) -> Runnable:
    """``llm`` answering into ``parser``, as ``with_structured_output`` returns it (with
    ``include_raw``: the raw message, the parsed answer and any parsing error), never passing a
    cut answer on as parsed (see :func:`_finished_answers`; ``max_tokens``: the budget, or how
    to read it from the answer's first message)."""
    finished = _finished_answers(max_tokens)
    if not include_raw:
        return llm | finished | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | finished | parser,
                                        parsing_error=lambda _: None)
    fallback = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parsed.with_fallbacks([fallback],
                                                        exception_key="parsing_error")


def _finished_answers(max_tokens: int | Callable[[BaseMessage], int | None] | None) -> Runnable:
    """Passes a structured call's answer (message or stream of chunks) on to its parser, but
    raises :class:`~modelplug.OutputTruncatedError` (naming max_tokens) when the output budget
    cut it: LangChain's JSON parsers accept partial JSON and would hand back an incomplete
    object as if it were the answer. A stream still yields the partial chunks before that."""

    def seen(chunk: BaseMessage, text: list[str], budget: list[int | None]) -> None:
        if not budget:  # a fallback set names the candidate that answered on its first chunk
            budget.append(max_tokens(chunk) if callable(max_tokens) else max_tokens)
        text.append(chunk.content if isinstance(chunk.content, str) else "")
        for call in getattr(chunk, "tool_call_chunks", None) or []:
            text.append(call.get("args") or "")
        check_finished("".join(text), (chunk.response_metadata or {}).get("finish_reason"),
                       budget[0])

    def transform(chunks: Iterator[BaseMessage]) -> Iterator[BaseMessage]:
        text: list[str] = []
        budget: list[int | None] = []
        for chunk in chunks:
            seen(chunk, text, budget)
            yield chunk

    async def atransform(chunks: AsyncIterator[BaseMessage]) -> AsyncIterator[BaseMessage]:
        text: list[str] = []
        budget: list[int | None] = []
        async for chunk in chunks:
            seen(chunk, text, budget)
            yield chunk

    return RunnableGenerator(transform, atransform, name="check_finished")


"""FallbackLLM: a LlamaIndex FunctionCallingLLM answering with the first of several LLMs that can.

The policy (what fails over, skipping by profile, streams failing over only before their first
chunk, FallbackExhaustedError) is modelplug's shared :mod:`modelplug.fallback`, the same one
LangChain's FallbackChatModel runs on; this module only adapts LlamaIndex calls to it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Sequence
from typing import Any

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
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools.types import BaseTool
from llama_index.core.types import Model
from llama_index.llms.modelplug._convert import completion_from_chat, to_openai_messages
from llama_index.llms.modelplug._tools import tool_selections, tool_turn_messages, tools_and_choice

from modelplug.catalog import CatalogModel
from modelplug.errors import StreamInterruptedError, is_retryable
from modelplug.fallback import (
    Candidate,
    Continuation,
    FallbackPolicy,
    Needs,
    Outcome,
    candidate_settings,
    combine_profiles,
)
from modelplug.routing import SESSION_HEADER, Endpoint, backend_endpoint, session_key
from modelplug.types import ChatRequest

#: Keyword arguments of a tool turn, as FallbackLLM._prepare_chat_with_tools passes them to chat.
_TOOL_KEYS = ("tool_required", "tool_choice", "allow_parallel_tool_calls")
_FALLBACK_KEY = "fallback_model"
_ATTEMPTS_KEY = "fallback_attempts"


def candidate_name(llm: LLM) -> str:
    """``provider:model`` for ModelPlug, else the class and its metadata's model name."""
    model = getattr(llm, "model", None)
    if isinstance(model, str) and type(llm).__name__ == "ModelPlug":
        return model
    try:
        name = llm.metadata.model_name
    except Exception:  # a metadata property that needs a client must not break naming
        name = "unknown"
    return f"{type(llm).__name__}:{name}"


def candidate_profile(llm: LLM) -> dict[str, Any]:
    """What the policy compares a request with: tool calling, image inputs, the context window.

    A ModelPlug has its backend's profile, with its own ``context_window`` override. Any other
    LLM says only what its metadata says: tool calling when it is a FunctionCallingLLM whose
    metadata says so, and its context window unless that is LlamaIndex's default
    (``DEFAULT_CONTEXT_WINDOW``, what ``LLMMetadata`` holds when an LLM sets none): an unknown
    window skips nothing, as a candidate that turns out too small fails over anyway.
    """
    backend = getattr(llm, "backend", None)
    if backend is not None and hasattr(backend, "profile"):
        profile = backend.profile().as_dict()
        if getattr(llm, "context_window", None) is not None:
            profile["max_input_tokens"] = llm.context_window
        return profile
    meta = llm.metadata
    profile: dict[str, Any] = {
        "tool_calling": isinstance(llm, FunctionCallingLLM) and meta.is_function_calling_model}
    if meta.context_window != DEFAULT_CONTEXT_WINDOW:
        profile["max_input_tokens"] = meta.context_window
    return profile


dispatcher = get_dispatcher(__name__)


class FallbackAttemptEvent(BaseEvent):
    """One candidate's try within a FallbackLLM call (LlamaIndex instrumentation): who, how it
    ended (``error``: the error's class name, None for the answer), its message and latency."""

    candidate: str
    error: str | None = None
    message: str = ""
    latency_s: float = 0.0

    @classmethod
    def class_name(cls) -> str:
        return "FallbackAttemptEvent"


def _report(outcome: Outcome[Any]) -> None:
    """Every attempt of a call as an instrumentation event, in order."""
    for attempt in outcome.attempts:
        dispatcher.event(FallbackAttemptEvent(**attempt.as_dict()))


def candidate_endpoint(llm: LLM, name: str) -> Endpoint | None:
    """What the health memory tracks for a candidate: a ModelPlug's backend endpoint; for
    another LLM its name and ``api_base``/``base_url``; None for a nested FallbackLLM."""
    if isinstance(llm, FallbackLLM):
        return None
    endpoint = backend_endpoint(getattr(llm, "backend", None)) if type(
        llm).__name__ == "ModelPlug" else None
    if endpoint is not None:
        return endpoint
    base_url = next((v for v in (getattr(llm, a, None) for a in ("api_base", "base_url"))
                     if isinstance(v, str)), None)
    provider, _, model = name.partition(":")
    return Endpoint(provider, base_url, model)


def continues_prefill(llm: LLM) -> bool:
    """Whether a candidate answers a conversation ending in an assistant message by continuing
    its text (an assistant prefill; ``ProviderSpec.prefill`` of our backends), so it may resume
    a stream cut after text was sent: a ModelPlug where its row says so, a nested FallbackLLM
    when every one of its candidates can; another LLM is not assumed to."""
    if isinstance(llm, FallbackLLM):
        return all(continues_prefill(m) for m in llm.models)
    return type(llm).__name__ == "ModelPlug" and bool(
        getattr(getattr(llm, "backend", None), "continues_prefill", False))


def _callbacks(handlers: list[BaseCallbackHandler]) -> CallbackManager:
    """A callback manager with exactly ``handlers``. (``CallbackManager([])`` is no such thing:
    given no handlers it takes those of ``Settings.callback_manager``.)"""
    manager = CallbackManager()
    manager.set_handlers(list(handlers))
    return manager


class FallbackLLM(FunctionCallingLLM):
    """An LLM that answers with the first of several LLMs that can.

    The candidates are tried in order with the same messages. A transient error (connection
    refused, timeout, HTTP 429 or 5xx) hands the request to the next candidate; a permanent one
    (400, 401, 404, a validation error) is raised at once. A candidate whose profile says it
    cannot serve the request (tools, images, context length) is skipped without a call. Streams
    fail over only before their first chunk. When every candidate fails or is skipped,
    ``modelplug.FallbackExhaustedError`` lists every error. The policy is the one LangChain's
    ``FallbackChatModel`` uses (``modelplug.fallback``).

    Each call is one LLM event of the FallbackLLM's callback manager: the candidate runs without
    the handlers the FallbackLLM has (a copy of it for that call; the object you passed is left
    as it is), so ``TokenCountingHandler`` counts a call once.

    Setup:
        .. code-block:: bash

            pip install llama-index-llms-modelplug "modelplug[openai,llamacpp]"

    Key init args:
        models: list[str | CatalogModel | LLM]
            Candidates, preferred first: model strings or catalog members (built as
            ``ModelPlug``) or any LlamaIndex LLM instances (``ModelPlug``, ``OpenAI``, ...).
        retry_on: exception class, tuple of them, or ``exc -> bool``
            What fails over (classes match the error or the typed error it maps to). Default:
            ``modelplug.fallback.is_retryable``.
        **kwargs
            Applied to every candidate given as a string (``temperature=0``,
            ``max_tokens=256``...) that takes them: network settings (``timeout``,
            ``max_retries``) are left out for in-process candidates.

    Instantiate:
        .. code-block:: python

            from llama_index.llms.modelplug import FallbackLLM, ModelPlug

            llm = FallbackLLM(
                [ModelPlug(model="openai:gpt-4o-mini", timeout=30, max_retries=1),
                 "llamacpp:smollm2"],  # last resort, in-process
                temperature=0,
            )

    Use:
        As any FunctionCallingLLM: ``chat``/``complete``, their streams and async twins,
        ``chat_with_tools`` (each candidate formats tools its own way), ``FunctionAgent``,
        query engines, ``structured_predict``. ``response.additional_kwargs["fallback_model"]``
        names the candidate that answered.
    """

    models: list[LLM] = Field(min_length=1)
    retry_on: Any = Field(default=None, exclude=True)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    strategy: str = Field(default="priority", description=(
        "The order each call tries the candidates in: 'priority' (as given: a fallback set), "
        "'round_robin' or 'least_outstanding' (fewest requests in flight): a pool of "
        "equivalent deployments."))
    affinity: bool = Field(default=False, description=(
        "Keep each conversation on one candidate: a key from the conversation's first "
        "messages picks the candidate tried first (a call's session_id=... does so too); "
        "ModelPlug candidates over HTTP send it as the x-session-id header."))
    health: Any = Field(default=True, exclude=True, description=(
        "Health memory: True (the process-wide modelplug.routing table), False (none), or a "
        "modelplug.routing.HealthTable."))
    resume_streams: bool = Field(default=False, description=(
        "When a chat stream without tools fails after its first step, continue the answer on "
        "the next candidate from the text already sent (an assistant prefill). Without it (or "
        "with tools, or once thinking was sent), StreamInterruptedError carries the last "
        "response."))

    _policy: FallbackPolicy = PrivateAttr()
    _endpoints: list[Endpoint | None] = PrivateAttr(default_factory=list)

    def __init__(self, models: Sequence[str | LLM] | None = None, **kwargs: Any) -> None:
        if models is None:
            models = kwargs.pop("models", None)
        if not models:
            raise ValueError(
                "FallbackLLM needs at least one candidate, e.g. "
                "FallbackLLM(['openai:gpt-4o-mini', 'llamacpp:smollm2'])."
            )
        names = set(type(self).model_fields)
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in names}
        model_kwargs = {**kwargs.pop("model_kwargs", {}), **extra}
        built = [_build(m, settings, i) for i, (m, settings) in enumerate(
            zip(models, candidate_settings(models, model_kwargs), strict=True))]
        super().__init__(models=built, model_kwargs=model_kwargs, **kwargs)
        # Validates retry_on, strategy and health.
        self._policy = FallbackPolicy(self.retry_on, strategy=self.strategy, health=self.health)
        self._endpoints = [candidate_endpoint(m, candidate_name(m)) for m in built]

    @classmethod
    def class_name(cls) -> str:
        return "FallbackLLM"

    @property
    def names(self) -> list[str]:
        """Each candidate's name, in the order they are tried."""
        return [candidate_name(m) for m in self.models]

    @property
    def metadata(self) -> LLMMetadata:
        """By the shared rule of :func:`modelplug.fallback.combine_profiles`: the smallest window
        and output (a prompt sized to them fits every candidate); function calling when any
        candidate has it (a call with tools goes to the candidates that can take them)."""
        metas = [m.metadata for m in self.models]
        combined = combine_profiles([candidate_profile(m) for m in self.models],
                                    ("tool_calling",))
        return LLMMetadata(
            context_window=min(m.context_window for m in metas),
            num_output=min(m.num_output for m in metas),
            is_chat_model=True,
            # Unknown counts as able, as ModelPlug.metadata reads an unknown profile.
            is_function_calling_model=combined.get("tool_calling") is not False,
            model_name=", ".join(self.names),
            system_role=MessageRole.SYSTEM,
        )

    # -- the policy -----------------------------------------------------------------------------

    def _candidates(self, reported: bool = True,
                    completion: bool = False) -> list[Candidate[LLM]]:
        """The candidates, each set up so that every callback handler sees a call once.

        ``reported``: this FallbackLLM reports the call as an LLM event of its own (chat,
        complete and their twins carry LlamaIndex's callback decorators), so each candidate runs
        without the handlers this FallbackLLM has; otherwise (structured_predict, whose events
        are the candidate's) each runs with them too. Either way a candidate whose handlers are
        not already so is replaced, for this call only, by a shallow copy with the right ones:
        the caller's object is left as it is, and the copy shares its weights and clients.
        ``completion``: for a completion stream, where a raw-completion ModelPlug can always
        continue the text sent.
        """
        mine = self.callback_manager.handlers
        out = []
        for model, endpoint in zip(self.models, self._endpoints, strict=True):
            theirs = model.callback_manager.handlers
            if reported:
                handlers = [h for h in theirs if h not in mine]
            else:
                handlers = theirs + [h for h in mine if h not in theirs]
            if len(handlers) != len(theirs):
                model = model.model_copy(update={"callback_manager": _callbacks(handlers)})
            continues = continues_prefill(model) or (
                completion and bool(getattr(model, "raw_completion", False))
                and type(model).__name__ == "ModelPlug")
            out.append(Candidate(candidate_name(model), model, candidate_profile(model),
                                 endpoint, continues=continues))
        return out

    def _session(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> str | None:
        """The call's session key (popped from ``kwargs``): the caller's ``session_id``, else,
        with ``affinity``, one from the conversation's first messages."""
        session = kwargs.pop("session_id", None)
        if session is None and self.affinity:
            try:
                session = session_key(to_openai_messages(messages))
            except Exception:  # content the converter refuses: no affinity for this call
                session = None
        return None if session is None else str(session)

    @staticmethod
    def _needs(messages: Sequence[ChatMessage], tools: Sequence[Any] | None,
               kwargs: dict[str, Any]) -> Needs | None:
        try:
            specs, choice = tools_and_choice(tools or [], kwargs.get("tool_choice"),
                                             bool(kwargs.get("tool_required")))
            return Needs.of_request(ChatRequest(messages=to_openai_messages(messages),
                                                tools=specs or None, tool_choice=choice))
        except Exception:  # content the converter refuses: skip nothing, let models decide
            return None

    @staticmethod
    def _split(kwargs: dict[str, Any]) -> tuple[list[BaseTool] | None, dict[str, Any],
                                                 dict[str, Any]]:
        kwargs = dict(kwargs)
        tools = kwargs.pop("tools", None)
        tool_kwargs = {k: kwargs.pop(k) for k in _TOOL_KEYS if k in kwargs}
        return tools, tool_kwargs, kwargs

    @staticmethod
    def _chat_call(messages: Sequence[ChatMessage], tools: list[BaseTool] | None,
                   tool_kwargs: dict[str, Any], kwargs: dict[str, Any],
                   stream: bool = False, aio: bool = False,
                   session: str | None = None) -> Callable[[LLM], Any]:
        """One candidate's call: its own tool formatting when tools are in play; the session
        carried on (a header for ModelPlug, ``session_id`` for a nested FallbackLLM)."""
        base = kwargs

        def call(llm: LLM) -> Any:
            kwargs = base
            if session is not None and isinstance(llm, FallbackLLM):
                kwargs = {**base, "session_id": session}
            elif session is not None and type(llm).__name__ == "ModelPlug":
                kwargs = {**base, "headers": {**(base.get("headers") or {}),
                                              SESSION_HEADER: session}}
            if tools and isinstance(llm, FunctionCallingLLM):
                method = {(False, False): llm.chat_with_tools,
                          (True, False): llm.stream_chat_with_tools,
                          (False, True): llm.achat_with_tools,
                          (True, True): llm.astream_chat_with_tools}[stream, aio]
                return method(tools, chat_history=list(messages), **tool_kwargs, **kwargs)
            method = {(False, False): llm.chat, (True, False): llm.stream_chat,
                      (False, True): llm.achat, (True, True): llm.astream_chat}[stream, aio]
            return method(list(messages), **kwargs)

        return call

    @staticmethod
    def _tag(response: Any, outcome: Outcome[Any]) -> Any:
        """Name the answering candidate and every attempt (candidate, error type, latency);
        each attempt is also a FallbackAttemptEvent (see :func:`_answered`)."""
        response.additional_kwargs = {
            **response.additional_kwargs, _FALLBACK_KEY: outcome.candidate.name,
            _ATTEMPTS_KEY: [a.as_dict() for a in outcome.attempts]}
        return response

    def _resumer(self, messages: Sequence[ChatMessage], tools: Any,
                 tool_kwargs: dict[str, Any], rest: dict[str, Any], session: str | None,
                 seen: list[Any], aio: bool = False) -> Any:
        """The policy's ``resume`` for a chat stream (see ``resume_streams``): the next
        candidate continues from the text already sent (with the same tools, if any), each of
        its steps' message carrying the whole answer so far; it starts afresh where nothing
        but held tool-call steps was sent; None where it cannot be spliced (thinking sent)."""
        if not self.resume_streams:
            return None

        def resume(exc: BaseException) -> Any:
            last = seen[-1] if seen else None
            if last is not None and any(isinstance(b, ThinkingBlock | ToolCallBlock)
                                        for b in last.message.blocks):
                return None
            text = _text(last.message) if last is not None else ""
            conversation = [*messages, *([ChatMessage(role=MessageRole.ASSISTANT,
                                                      content=text)] if text else [])]
            call = self._chat_call(conversation, tools, tool_kwargs, rest, stream=True,
                                   aio=aio, session=session)
            if not aio:
                return Continuation(lambda llm: (_prefixed(step, text) for step in _held(
                    call(llm))), prefill=bool(text))

            async def astart(llm: LLM) -> AsyncIterator[ChatResponse]:
                async for step in _aheld(await call(llm)):
                    yield _prefixed(step, text)

            return Continuation(astart, prefill=bool(text))

        return resume

    def _completion_resumer(self, prompt: str, formatted: bool, kwargs: dict[str, Any],
                            seen: list[Any], aio: bool = False) -> Any:
        """``resume`` for a completion stream: a raw-completion ModelPlug goes on from the
        prompt and the text sent (any raw completion can), a chat one from the prompt as a
        user message and the text as an assistant prefill; each step's ``text`` is the
        whole answer so far."""
        if not self.resume_streams:
            return None

        def resume(exc: BaseException) -> Any:
            text = (seen[-1].text or "") if seen else ""

            def steps(llm: LLM) -> Any:
                if getattr(llm, "raw_completion", False):
                    head = prompt if formatted else llm.completion_to_prompt(prompt)
                    method = llm.astream_complete if aio else llm.stream_complete
                    return method(head + text, formatted=True, **kwargs), False
                conversation = [ChatMessage(role=MessageRole.USER, content=prompt), *(
                    [ChatMessage(role=MessageRole.ASSISTANT, content=text)] if text else [])]
                method = llm.astream_chat if aio else llm.stream_chat
                return method(conversation, **kwargs), True

            def step_of(step: Any, chat: bool) -> CompletionResponse:
                if chat:
                    return completion_from_chat(step, text + _text(step.message))
                step.text = text + (step.text or "")
                return step

            if not aio:
                def start(llm: LLM) -> Any:
                    made, chat = steps(llm)
                    return (step_of(step, chat) for step in made)

                return Continuation(start, prefill=bool(text))

            async def astart(llm: LLM) -> AsyncIterator[CompletionResponse]:
                made, chat = steps(llm)
                async for step in await made:
                    yield step_of(step, chat)

            return Continuation(astart, prefill=bool(text))

        return resume

    def _tagged_stream(self, steps: Any, chosen: list[Outcome[None]],
                       seen: list[Any] | None = None) -> Generator[Any, None, None]:
        last, reported = None, 0
        try:
            for last in steps:
                if seen is not None:
                    seen[:] = [last]
                if len(chosen) > reported:  # once a candidate streams: its attempts so far
                    _report(chosen[-1])
                    reported = len(chosen)
                yield self._tag(last, chosen[0]) if chosen else last
        except Exception as exc:
            _raise_interrupted(exc, last, chosen)
            raise

    async def _atagged_stream(self, steps: Any, chosen: list[Outcome[None]],
                              seen: list[Any] | None = None) -> AsyncGenerator[Any, None]:
        last, reported = None, 0
        try:
            async for last in steps:
                if seen is not None:
                    seen[:] = [last]
                if len(chosen) > reported:
                    _report(chosen[-1])
                    reported = len(chosen)
                yield self._tag(last, chosen[0]) if chosen else last
        except Exception as exc:
            _raise_interrupted(exc, last, chosen)
            raise

    # -- chat -----------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        tools, tool_kwargs, rest = self._split(kwargs)
        session = self._session(messages, rest)
        outcome = self._policy.run(
            self._candidates(), self._chat_call(messages, tools, tool_kwargs, rest,
                                                session=session),
            needs=self._needs(messages, tools, tool_kwargs), session=session)
        return _answered(self._tag(outcome.value, outcome), outcome)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        tools, tool_kwargs, rest = self._split(kwargs)
        session = self._session(messages, rest)
        outcome = await self._policy.arun(
            self._candidates(), self._chat_call(messages, tools, tool_kwargs, rest, aio=True,
                                                session=session),
            needs=self._needs(messages, tools, tool_kwargs), session=session)
        return _answered(self._tag(outcome.value, outcome), outcome)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        tools, tool_kwargs, rest = self._split(kwargs)
        session = self._session(messages, rest)
        chosen: list[Outcome[None]] = []
        seen: list[Any] = []
        call = self._chat_call(messages, tools, tool_kwargs, rest, stream=True, session=session)
        steps = self._policy.stream(
            self._candidates(), (lambda llm: _held(call(llm))) if self.resume_streams else call,
            needs=self._needs(messages, tools, tool_kwargs), on_select=chosen.append,
            session=session,
            resume=self._resumer(messages, tools, tool_kwargs, rest, session, seen))
        return self._tagged_stream(steps, chosen, seen)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage],
                           **kwargs: Any) -> ChatResponseAsyncGen:
        tools, tool_kwargs, rest = self._split(kwargs)
        session = self._session(messages, rest)
        call = self._chat_call(messages, tools, tool_kwargs, rest, stream=True, aio=True,
                               session=session)

        async def start(llm: LLM) -> AsyncIterator[ChatResponse]:
            steps = await call(llm)
            async for step in (_aheld(steps) if self.resume_streams else steps):
                yield step

        chosen: list[Outcome[None]] = []
        seen: list[Any] = []
        steps = self._policy.astream(
            self._candidates(), start, needs=self._needs(messages, tools, tool_kwargs),
            on_select=chosen.append, session=session,
            resume=self._resumer(messages, tools, tool_kwargs, rest, session, seen, aio=True))
        return self._atagged_stream(steps, chosen, seen)

    # -- complete -------------------------------------------------------------------------------

    def _prompt_needs(self, prompt: str) -> Needs | None:
        return self._needs([ChatMessage(role=MessageRole.USER, content=prompt)], None, {})

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False,
                 **kwargs: Any) -> CompletionResponse:
        outcome = self._policy.run(
            self._candidates(), lambda llm: llm.complete(prompt, formatted=formatted, **kwargs),
            needs=self._prompt_needs(prompt))
        return _answered(self._tag(outcome.value, outcome), outcome)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponse:
        outcome = await self._policy.arun(
            self._candidates(), lambda llm: llm.acomplete(prompt, formatted=formatted, **kwargs),
            needs=self._prompt_needs(prompt))
        return _answered(self._tag(outcome.value, outcome), outcome)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponseGen:
        chosen: list[Outcome[None]] = []
        seen: list[Any] = []
        steps = self._policy.stream(
            self._candidates(completion=True),
            lambda llm: llm.stream_complete(prompt, formatted=formatted, **kwargs),
            needs=self._prompt_needs(prompt), on_select=chosen.append,
            resume=self._completion_resumer(prompt, formatted, kwargs, seen))
        return self._tagged_stream(steps, chosen, seen)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        async def start(llm: LLM) -> AsyncIterator[CompletionResponse]:
            async for step in await llm.astream_complete(prompt, formatted=formatted, **kwargs):
                yield step

        chosen: list[Outcome[None]] = []
        seen: list[Any] = []
        steps = self._policy.astream(
            self._candidates(completion=True), start, needs=self._prompt_needs(prompt),
            on_select=chosen.append,
            resume=self._completion_resumer(prompt, formatted, kwargs, seen, aio=True))
        return self._atagged_stream(steps, chosen, seen)

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
        """The tools stay LlamaIndex tools: each candidate formats them its own way."""
        out: dict[str, Any] = {"messages": tool_turn_messages(user_msg, chat_history), **kwargs}
        if tools:
            out.update(tools=list(tools), tool_required=tool_required,
                       allow_parallel_tool_calls=allow_parallel_tool_calls)
            if tool_choice is not None:
                out["tool_choice"] = tool_choice
        return out

    def get_tool_calls_from_response(self, response: ChatResponse,
                                     error_on_no_tool_call: bool = True,
                                     **kwargs: Any) -> list[ToolSelection]:
        """Read by the candidate that answered (``additional_kwargs['fallback_model']``)."""
        name = response.additional_kwargs.get(_FALLBACK_KEY)
        for llm in self.models:
            if candidate_name(llm) == name and isinstance(llm, FunctionCallingLLM):
                return llm.get_tool_calls_from_response(
                    response, error_on_no_tool_call=error_on_no_tool_call, **kwargs)
        return tool_selections(response, error_on_no_tool_call)

    # -- structured output: each candidate's own method (native json_schema where it has it) --

    def structured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                           llm_kwargs: dict[str, Any] | None = None,
                           **prompt_args: Any) -> Model:
        return self._policy.run(
            self._candidates(reported=False), lambda llm: llm.structured_predict(
                output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)).value

    async def astructured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                                  llm_kwargs: dict[str, Any] | None = None,
                                  **prompt_args: Any) -> Model:
        outcome: Outcome[Model] = await self._policy.arun(
            self._candidates(reported=False), lambda llm: llm.astructured_predict(
                output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args))
        return outcome.value

    def stream_structured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                                  llm_kwargs: dict[str, Any] | None = None,
                                  **prompt_args: Any) -> Generator[Any, None, None]:
        return self._policy.stream(
            self._candidates(reported=False), lambda llm: llm.stream_structured_predict(
                output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args))

    async def astream_structured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                                         llm_kwargs: dict[str, Any] | None = None,
                                         **prompt_args: Any) -> AsyncGenerator[Any, None]:
        async def start(llm: LLM) -> AsyncIterator[Any]:
            async for item in await llm.astream_structured_predict(
                    output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args):
                yield item

        return self._policy.astream(self._candidates(reported=False), start)


def _text(message: ChatMessage) -> str:
    """The text of a message's text blocks (``content`` refuses messages with several
    blocks, as a step with a tool call has)."""
    return "".join(b.text for b in message.blocks if isinstance(b, TextBlock))


def _prefixed(step: ChatResponse, text: str) -> ChatResponse:
    """A resuming candidate's step, its message holding the whole answer so far (LlamaIndex
    stream steps carry the text to date; ``delta`` stays the step's own)."""
    if text:
        blocks = step.message.blocks
        first = next((b for b in blocks if isinstance(b, TextBlock)), None)
        if first is not None:
            first.text = text + first.text
        else:
            blocks.insert(0, TextBlock(text=text))
    return step


def _has_call(step: Any) -> bool:
    message = getattr(step, "message", None)
    return message is not None and any(isinstance(b, ToolCallBlock) for b in message.blocks)


def _held(steps: Any) -> Generator[Any, None, None]:
    """A candidate's steps, those with a tool call held until its stream ends: a stream cut
    mid-call sends none of the call, and the next candidate makes it afresh."""
    held = []
    for step in steps:
        if held or _has_call(step):
            held.append(step)
        else:
            yield step
    yield from held


async def _aheld(steps: Any) -> AsyncGenerator[Any, None]:
    held = []
    async for step in steps:
        if held or _has_call(step):
            held.append(step)
        else:
            yield step
    for step in held:
        yield step


def _answered(response: Any, outcome: Outcome[Any]) -> Any:
    """``response``, once its call's attempts are reported as instrumentation events."""
    _report(outcome)
    return response


def _raise_interrupted(exc: Exception, last: Any, chosen: list[Outcome[None]]) -> None:
    """A failover-worthy error after some of the answer reached the caller is raised as a
    StreamInterruptedError carrying the last response (its message holds the text so far, its
    raw the provider's usage where sent); anything else returns, to be raised as itself."""
    if last is None or isinstance(exc, StreamInterruptedError) or not is_retryable(exc):
        return
    name = chosen[0].candidate.name if chosen else None
    raise StreamInterruptedError(
        f"The stream from {name or 'the answering candidate'} failed after part of the answer "
        f"had reached you ({type(exc).__name__}: {exc}). The part already sent is in .partial.",
        partial=last, usage=(last.raw or {}).get("usage") if isinstance(last.raw, dict)
        else None, candidate=name) from exc


def _build(model: Any, model_kwargs: dict[str, Any], index: int) -> LLM:
    if isinstance(model, LLM):
        return model
    if isinstance(model, str | CatalogModel):
        from llama_index.llms.modelplug.base import ModelPlug

        # No handlers of its own: the FallbackLLM's events cover its calls (see _candidates).
        return ModelPlug(model=model, callback_manager=_callbacks([]), **model_kwargs)
    raise TypeError(
        f"Candidate {index} of FallbackLLM is {model!r} ({type(model).__name__}); pass a model "
        "string ('provider:model_id'), a catalog member (LlamaCppModel.SMOLLM2) or a LlamaIndex "
        "LLM instance."
    )

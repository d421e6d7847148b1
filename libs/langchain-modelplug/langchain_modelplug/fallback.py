"""FallbackChatModel: an ordered set of chat models that is itself a chat model."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForChainRun,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForChainRun,
    CallbackManagerForLLMRun,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_messages
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, RunnableSequence
from langchain_core.runnables.config import ensure_config, patch_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from langchain_modelplug import _attempts
from langchain_modelplug._convert import to_openai_messages
from langchain_modelplug.chat_models import forced_tool_parser, structured_runnable
from modelplug.catalog import CatalogModel
from modelplug.errors import StreamInterruptedError, is_retryable
from modelplug.fallback import (
    Candidate,
    Continuation,
    FallbackPolicy,
    Needs,
    Outcome,
    RetryOn,
    candidate_settings,
    combine_profiles,
)
from modelplug.routing import SESSION_HEADER, Endpoint, backend_endpoint, session_key
from modelplug.types import ChatRequest

logger = logging.getLogger("modelplug.fallback")

#: LangGraph's tag for runs whose tokens its "messages" stream must not repeat: the fallback
#: run reports every token itself, so the candidate run under it is tagged.
_NOSTREAM = "nostream"

#: The LangChain custom event (``on_custom_event``) each attempt of a call is reported as.
ATTEMPT_EVENT = "modelplug_fallback_attempt"

#: Profile fields that are booleans, combined over candidates.
_BOOL_FIELDS = ("tool_calling", "tool_choice", "tool_call_streaming", "structured_output",
                "image_inputs", "image_url_inputs", "pdf_inputs", "audio_inputs", "video_inputs",
                "reasoning_output", "text_inputs", "text_outputs")


def candidate_name(model: BaseChatModel) -> str:
    """``provider:model`` for a candidate, from our model string or its LangSmith params."""
    ref = getattr(getattr(model, "backend", None), "ref", None)
    if ref is not None and type(model).__module__.startswith("langchain_modelplug"):
        return f"{ref.provider}:{ref.model_id}"
    params = _ls_params(model)
    provider, name = params.get("ls_provider"), params.get("ls_model_name")
    name = name or getattr(model, "model_name", None) or getattr(model, "model", None)
    provider = provider or model._llm_type
    return f"{provider}:{name}" if name else str(provider)


#: Attributes where LangChain chat models keep their server's address.
_BASE_URL_ATTRS = ("openai_api_base", "base_url", "anthropic_api_url", "api_base")


def candidate_endpoint(model: BaseChatModel, name: str) -> Endpoint | None:
    """What the health memory tracks for a candidate: our backend's endpoint (provider, base
    URL, model, key fingerprint); for another chat model its name and base URL; None for a
    nested FallbackChatModel (its own candidates are tracked)."""
    if isinstance(model, FallbackChatModel):
        return None
    if type(model).__module__.startswith("langchain_modelplug"):
        endpoint = backend_endpoint(getattr(model, "backend", None))
        if endpoint is not None:
            return endpoint
    base_url = next((v for v in (getattr(model, a, None) for a in _BASE_URL_ATTRS)
                     if isinstance(v, str)), None)
    provider, _, model_name = name.partition(":")
    return Endpoint(provider, base_url, model_name)


def continues_prefill(model: BaseChatModel) -> bool:
    """Whether a candidate answers a conversation ending in an AIMessage by continuing its
    text (an assistant prefill; ``ProviderSpec.prefill`` of our backends), so it may resume a
    stream cut after text was sent: ours where the row says so, a nested set when every one of
    its candidates can; another chat model is not assumed to."""
    if isinstance(model, FallbackChatModel):
        return all(continues_prefill(m) for m in model.models)
    backend = getattr(model, "backend", None)
    return type(model).__module__.startswith("langchain_modelplug") and bool(
        getattr(backend, "continues_prefill", False))


def _events_config(run_manager: Any, manager_class: type) -> RunnableConfig:
    """A config whose custom events are this run's own (its handlers, tags and metadata)."""
    manager = manager_class(handlers=list(run_manager.handlers), parent_run_id=run_manager.run_id)
    manager.add_tags(run_manager.tags)
    manager.add_metadata(run_manager.metadata)
    return RunnableConfig(callbacks=manager)


def _ls_params(model: BaseChatModel, stop: list[str] | None = None) -> dict[str, Any]:
    """A candidate's LangSmith params, or none for one whose _get_ls_params needs a call's
    kwargs."""
    try:
        return dict(model._get_ls_params(stop=stop))
    except Exception:
        return {}


def combined_profile(profiles: Sequence[ModelProfile | None]) -> ModelProfile:
    """What the set can be said to have, by the shared rule of
    :func:`modelplug.fallback.combine_profiles`: tool calling and image inputs when any
    candidate has them (candidates lacking them are skipped), other capabilities only when every
    candidate has them, the smallest limits; unknown values are left out."""
    return ModelProfile(**combine_profiles(profiles, _BOOL_FIELDS))  # type: ignore[typeddict-item]


def _as_messages(value: LanguageModelInput) -> list[BaseMessage]:
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, str):
        return convert_to_messages([("human", value)])
    return convert_to_messages(value)  # type: ignore[arg-type]


def request_needs(messages: Sequence[BaseMessage], tools: list[dict[str, Any]] | None,
                  tool_choice: Any) -> Needs | None:
    """What the request needs (tools, images, context), or None when it cannot be told."""
    try:
        request = ChatRequest(messages=to_openai_messages(messages), tools=tools or None,
                              tool_choice="none" if tool_choice in ("none", False) else None)
        return Needs.of_request(request)
    except Exception:  # unusual content the converter refuses: skip nothing, let models decide
        return None


def _unwrap(runnable: Runnable) -> tuple[BaseChatModel, dict[str, Any]] | None:
    """The chat model under ``bind``/``bind_tools`` bindings and their merged kwargs, or None
    for anything else (a binding with its own config, a sequence)."""
    kwargs: dict[str, Any] = {}
    while isinstance(runnable, RunnableBinding):
        if runnable.config or runnable.config_factories:
            return None
        kwargs = {**runnable.kwargs, **kwargs}  # the outer binding wins
        runnable = runnable.bound
    return (runnable, kwargs) if isinstance(runnable, BaseChatModel) else None


def _call_kwargs(bound: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    merged = {**bound, **kwargs}
    # Tracing-only keys BaseChatModel.invoke pops before _generate; this run reports them.
    merged.pop("ls_structured_output_format", None)
    merged.pop("structured_output_format", None)
    return merged


def _as_generation_chunk(message: Any) -> ChatGenerationChunk:
    """A chunk for a whole message (a candidate that does not stream) or a streamed chunk."""
    if isinstance(message, AIMessageChunk):
        return ChatGenerationChunk(message=message)
    if isinstance(message, AIMessage):
        chunk = AIMessageChunk(
            content=message.content, additional_kwargs=message.additional_kwargs,
            response_metadata=message.response_metadata, usage_metadata=message.usage_metadata,
            id=message.id, chunk_position="last",
            tool_call_chunks=[tool_call_chunk(name=c["name"], args=json.dumps(c["args"]),
                                              id=c.get("id"), index=i)
                              for i, c in enumerate(message.tool_calls)])
        return ChatGenerationChunk(message=chunk)
    return ChatGenerationChunk(message=AIMessageChunk(content=getattr(message, "content",
                                                                      str(message))))


class _Sent:
    """What a fallback stream has sent the caller: to continue it on the next candidate, or to
    hand it over with the error that cut it."""

    def __init__(self, messages: list[BaseMessage]) -> None:
        self.messages = messages
        self.chunks: list[ChatGenerationChunk] = []

    def add(self, chunk: ChatGenerationChunk) -> ChatGenerationChunk:
        self.chunks.append(chunk)
        return chunk

    def merged(self) -> AIMessageChunk | None:
        if not self.chunks:
            return None
        message = self.chunks[0].message
        for chunk in self.chunks[1:]:
            message = message + chunk.message
        return message  # type: ignore[return-value]

    def resume(self, starting: Callable[[list[BaseMessage]], Any]) -> Any:
        """The continuation on the next candidates, or None when it cannot be
        spliced: reasoning (thinking) already sent, or a tool call half sent (only when the
        candidate's chunks were not held, see ``_held``). With nothing but held chunks sent,
        the next candidate starts afresh; otherwise it continues the text already sent from
        an assistant prefill."""
        message = self.merged()
        if message is None:
            return Continuation(starting(self.messages))
        kwargs = message.additional_kwargs
        if message.tool_call_chunks or kwargs.get("reasoning_content") or kwargs.get(
                "thinking_blocks"):
            return None
        text = message.text if isinstance(message.text, str) else str(message.content)
        if not text:
            return Continuation(starting(self.messages))
        return Continuation(starting([*self.messages, AIMessage(content=text)]), prefill=True)

    def interrupted(self, exc: Exception) -> Exception:
        """A failover-worthy error after some of the answer was sent, as a
        StreamInterruptedError carrying that part and its usage; any other error as itself."""
        if not self.chunks or isinstance(exc, StreamInterruptedError) or not is_retryable(exc):
            return exc
        partial = self.merged()
        name = (partial.response_metadata.get("fallback_resumed_by")
                or partial.response_metadata.get("fallback_model")) if partial else None
        return StreamInterruptedError(
            f"The stream from {name or 'the answering candidate'} failed after "
            f"{len(self.chunks)} chunk(s) had reached you ({type(exc).__name__}: {exc}). The "
            "part already sent is in .partial (usage in .usage); pass resume_streams=True to "
            "continue such a stream on the next candidate.",
            partial=partial, usage=partial.usage_metadata if partial else None, candidate=name)


class FallbackChatModel(BaseChatModel):
    """A chat model that answers with the first of several chat models that can.

    The candidates are tried in order with the same conversation. A candidate that fails with a
    transient error (connection refused, timeout, HTTP 429 or 5xx) hands the request to the next;
    a permanent error (400, 401, 404, a validation error) is raised at once. A candidate whose
    profile says it cannot serve the request (tools, images, context length) is skipped without a
    call. Streams fail over only before their first chunk. When every candidate fails or is
    skipped, ``modelplug.FallbackExhaustedError`` carries every error, the last chained as cause.

    Unlike ``model.with_fallbacks([...])`` (a ``RunnableWithFallbacks``), this stays a
    ``BaseChatModel``: ``bind_tools`` and ``with_structured_output`` apply to every candidate,
    and it works as the model of ``langchain.agents.create_agent``.

    Each call is one chat-model run: the candidates run inside it, so callbacks see one start and
    one end, tokens once, and usage counted once. The answer's ``response_metadata`` names the
    candidate that answered (``fallback_model``), the failures before it
    (``fallback_failures``) and every attempt (``fallback_attempts``: candidate, error type,
    latency; skips included); a stream says so once, on its first chunk. On invoke each attempt
    is also a custom callback event (``ATTEMPT_EVENT``) of this run.

    Health memory, pools and streams (``modelplug.routing``): a candidate that times out, is
    refused or answers 5xx/429 is skipped by every set in the process for a cooldown, then
    probed once (``health=``); ``strategy="round_robin"`` or ``"least_outstanding"`` makes the
    set a pool of equivalent deployments, ``affinity=True`` (or a call's ``session_id=``) keeps
    a conversation on one of them; ``resume_streams=True`` continues a stream cut after its
    first chunk on the next candidate, else ``StreamInterruptedError`` carries what was sent.

    Setup:
        .. code-block:: bash

            pip install "langchain-modelplug[openai,llamacpp]"

    Key init args:
        models: list[str | CatalogModel | BaseChatModel]
            The candidates, preferred first: model strings or catalog members (built as
            ``ChatModelPlug``) or any LangChain chat model instances (``ChatModelPlug``,
            ``ChatOpenAI``, ...).
        retry_on: type | tuple[type, ...] | Callable[[BaseException], bool] | None
            What fails over: exception classes (matched against the error and against the
            typed error it maps to, so ``ConnectionError`` covers ``openai.APIConnectionError``),
            or a predicate. Default: ``modelplug.fallback.is_retryable`` (connection errors,
            timeouts, 429, 5xx).
        **kwargs
            Applied to every candidate given as a string (e.g. ``temperature=0``,
            ``max_tokens=256``) that takes them: a network setting (``timeout``,
            ``max_retries``) is left out for an in-process candidate. Configure instances
            yourself.

    Instantiate:
        .. code-block:: python

            from langchain_modelplug import ChatModelPlug, FallbackChatModel

            llm = FallbackChatModel(
                [
                    ChatModelPlug(model="openai:gpt-4o-mini", timeout=30, max_retries=1),
                    "llamacpp:smollm2",  # last resort, in-process
                ],
                temperature=0,
            )

    Invoke:
        .. code-block:: python

            msg = llm.invoke("What is the capital of France? Answer in one sentence.")
            msg.response_metadata["fallback_model"]  # which candidate answered

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

            llm_with_tools = llm.bind_tools([get_weather])   # bound on every candidate

            from langchain.agents import create_agent
            agent = create_agent(model=llm, tools=[get_weather])

    Structured output:
        .. code-block:: python

            llm.with_structured_output(Person).invoke("Invent a person.")

    Profile:
        .. code-block:: python

            llm.profile    # what the set can do (see ``combined_profile``)
            llm.profiles   # each candidate's own profile
    """

    models: list[BaseChatModel] = Field(min_length=1)
    retry_on: Any = Field(default=None, exclude=True)
    #: Settings applied to the candidates given as model strings.
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    strategy: str = Field(default="priority", description=(
        "The order each call tries the candidates in: 'priority' (as given: a fallback set), "
        "'round_robin' or 'least_outstanding' (fewest requests in flight): a pool of "
        "equivalent deployments."))
    affinity: bool = Field(default=False, description=(
        "Keep each conversation on one candidate (the one holding its prefix cache): a key "
        "from the conversation's first messages picks the candidate tried first. A call's own "
        "session_id=... does so too. HTTP candidates receive the key as the x-session-id "
        "header."))
    resume_streams: bool = Field(default=False, description=(
        "When a stream fails after its first chunk, continue the answer on the next candidate "
        "from the text already sent (an assistant prefill), so the caller sees one stream. A "
        "half-sent thinking block cannot be spliced: that raises. Tool-call chunks are held "
        "until a candidate's stream ends, so a cut tool call restarts on the next candidate. "
        "Without it, such a failure raises StreamInterruptedError carrying the partial "
        "message and its usage."))
    health: Any = Field(default=True, exclude=True, description=(
        "Health memory: True (the process-wide modelplug.routing table: a candidate that timed "
        "out, was refused or answered 5xx/429 is skipped for a cooldown), False (none), or a "
        "modelplug.routing.HealthTable."))

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _policy: FallbackPolicy = PrivateAttr()
    _endpoints: list[Endpoint | None] = PrivateAttr(default_factory=list)
    _names: list[str] = PrivateAttr(default_factory=list)
    _candidate_list: list[Candidate[Runnable]] | None = PrivateAttr(default=None)
    #: Per-candidate runnables after bind_tools (None: the model itself; False: cannot bind).
    _bound: list[Runnable | bool | None] | None = PrivateAttr(default=None)
    #: Candidates this set never calls: their with_structured_output refused the schema.
    _left_out: frozenset[int] = PrivateAttr(default=frozenset())
    _tools: list[dict[str, Any]] | None = PrivateAttr(default=None)
    _tool_choice: Any = PrivateAttr(default=None)
    #: Each candidate's LangSmith params, per stop list (see _get_ls_params).
    _own_ls_params: dict[tuple[str, ...], list[dict[str, Any]]] = PrivateAttr(
        default_factory=dict)
    #: Whether any candidate could be skipped for what a request needs (see _needs).
    _may_skip: bool = PrivateAttr(default=True)

    def __init__(self, models: Sequence[str | BaseChatModel] | None = None, **kwargs: Any) -> None:
        if models is None:
            models = kwargs.pop("models", None)
        if not models:
            raise ValueError(
                "FallbackChatModel needs at least one candidate, e.g. "
                "FallbackChatModel(['openai:gpt-4o-mini', 'llamacpp:smollm2'])."
            )
        names = set(type(self).model_fields) | {"callbacks", "tags", "metadata"}
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in names}
        model_kwargs = {**kwargs.pop("model_kwargs", {}), **extra}
        built = [self._build(m, settings, i) for i, (m, settings) in enumerate(
            zip(models, candidate_settings(models, model_kwargs), strict=True))]
        super().__init__(models=built, model_kwargs=model_kwargs, **kwargs)
        # Validates retry_on, strategy and health.
        self._policy = FallbackPolicy(self.retry_on, strategy=self.strategy, health=self.health)
        self._endpoints = [candidate_endpoint(m, n) for m, n in zip(built, self.names,
                                                                    strict=True)]

    @staticmethod
    def _build(model: Any, model_kwargs: dict[str, Any], index: int) -> BaseChatModel:
        if isinstance(model, BaseChatModel):
            return model
        if isinstance(model, str | CatalogModel):
            from langchain_modelplug.chat_models import ChatModelPlug

            return ChatModelPlug(model=model, **model_kwargs)
        raise TypeError(
            f"Candidate {index} of FallbackChatModel is {model!r} ({type(model).__name__}); pass a "
            "model string ('provider:model_id'), a catalog member (LlamaCppModel.SMOLLM2) or a "
            "LangChain BaseChatModel instance. A bound "
            "runnable (model.bind_tools(...)) cannot be a candidate: bind tools on the "
            "FallbackChatModel instead, which binds them on every candidate."
        )

    # -- identity -------------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "modelplug-fallback"

    @property
    def names(self) -> list[str]:
        """Each candidate as ``provider:model``, in the order they are tried."""
        if len(self._names) != len(self.models):  # the candidates never change: named once
            self._names = [candidate_name(m) for m in self.models]
        return list(self._names)

    @property
    def profiles(self) -> list[ModelProfile | None]:
        """Each candidate's own profile, in order."""
        return [getattr(m, "profile", None) for m in self.models]

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"models": self.names}

    def _resolve_model_profile(self) -> ModelProfile | None:
        return combined_profile(self.profiles)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # The run names the whole set: chat-model candidates run inside it (see "calls" below),
        # so the answering one is named in response_metadata["fallback_model"], not here.
        # A sampling setting is reported when the call sets it (every candidate gets it) or when
        # every candidate has the same one (as the shared kwargs give the string-built ones).
        params = LangSmithParams(ls_provider="fallback", ls_model_name=", ".join(self.names),
                                 ls_model_type="chat")
        key = tuple(stop or ())
        own = self._own_ls_params.get(key)
        if own is None:  # the candidates never change: asked once per stop list
            own = self._own_ls_params[key] = [_ls_params(m, stop) for m in self.models]
        for key, ls_key in (("temperature", "ls_temperature"), ("max_tokens", "ls_max_tokens")):
            values = {p.get(ls_key) for p in own}
            value = kwargs.get(key)
            if value is None and len(values) == 1:
                value = values.pop()
            if value is not None:
                params[ls_key] = value  # type: ignore[literal-required]
        if stop:
            params["ls_stop"] = stop
        return params

    # -- candidates -----------------------------------------------------------------------------

    def _candidates(self) -> list[Candidate[Runnable]]:
        """The candidates as the policy sees them, built once per (bound) set: the models,
        bindings, profiles and endpoints never change after it is made."""
        cached = self._candidate_list
        if cached is not None:
            return cached
        out = []
        names = self.names
        for i, model in enumerate(self.models):
            if i in self._left_out:
                continue
            bound = self._bound[i] if self._bound is not None else None
            endpoint = self._endpoints[i] if self._endpoints else None
            if bound is False:  # cannot bind tools: a profile that says so makes it skipped
                out.append(Candidate(names[i], model, {"tool_calling": False},
                                     endpoint))
            else:
                out.append(Candidate(names[i], bound or model,
                                     getattr(model, "profile", None), endpoint,
                                     continues=continues_prefill(model)))
        self._candidate_list = out
        self._may_skip = any(Needs.may_skip(c.profile) for c in out)
        return out

    def _session(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> str | None:
        """The call's session key (popped from ``kwargs``): the caller's ``session_id``, else,
        with ``affinity``, one from the conversation's first messages; None without affinity."""
        session = kwargs.pop("session_id", None)
        if session is None and self.affinity:
            try:
                session = session_key(to_openai_messages(messages))
            except Exception:  # content the converter refuses: no affinity for this call
                session = None
        return None if session is None else str(session)

    @staticmethod
    def _with_session(model: BaseChatModel, kwargs: dict[str, Any],
                      session: str | None) -> dict[str, Any]:
        """``kwargs`` for one candidate, carrying the session on: as the x-session-id header
        to ours (in-process backends ignore it), as session_id to a nested set."""
        if session is None:
            return kwargs
        if isinstance(model, FallbackChatModel):
            return {**kwargs, "session_id": session}
        if type(model).__module__.startswith("langchain_modelplug"):
            return {**kwargs, "headers": {**(kwargs.get("headers") or {}),
                                          SESSION_HEADER: session}}
        return kwargs

    def _needs(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> Needs | None:
        """What the request needs, or None when no candidate could be skipped for a need (then
        nothing needs working out: a pool of like replicas pays nothing for it)."""
        if not self._may_skip:
            return None
        tools = kwargs.get("tools") or self._tools
        choice = kwargs.get("tool_choice", self._tool_choice)
        return request_needs(messages, tools, choice)

    @staticmethod
    def _child_config(run_manager: Any) -> RunnableConfig:
        """Callbacks for a candidate that must run as a runnable of its own (one that is not a
        chat model under bindings): a child of this run, tagged so LangGraph's messages stream
        does not repeat its tokens (this run reports them)."""
        if run_manager is None:
            return RunnableConfig()
        manager = CallbackManager(handlers=[], parent_run_id=run_manager.run_id)
        manager.set_handlers(run_manager.inheritable_handlers)
        manager.add_tags(run_manager.inheritable_tags)
        manager.add_metadata(run_manager.inheritable_metadata)
        manager.add_tags([_NOSTREAM], inherit=False)
        return RunnableConfig(callbacks=manager)

    @staticmethod
    def _fallback_metadata(outcome: Outcome[Any]) -> dict[str, Any]:
        """What an answer's response_metadata says of the fallback run: the candidate that
        answered and, when there were any, the failures (and skips) before it."""
        meta: dict[str, Any] = {"fallback_model": outcome.candidate.name}
        if outcome.failures:
            meta["fallback_failures"] = [f"{n}: {type(e).__name__}: {e}"
                                         for n, e in outcome.failures]
        if outcome.attempts:
            meta["fallback_attempts"] = [a.as_dict() for a in outcome.attempts]
        return meta

    @staticmethod
    def _report(outcome: Outcome[Any], run_manager: Any, start: int = 0) -> None:
        """Each attempt of the call (from ``start``) as a custom event of this run
        (``ATTEMPT_EVENT``)."""
        if run_manager is None or not run_manager.handlers:  # no one listens: skip the cost
            return
        config = _events_config(run_manager, CallbackManager)
        for attempt in outcome.attempts[start:]:
            dispatch_custom_event(ATTEMPT_EVENT, attempt.as_dict(), config=config)

    @staticmethod
    async def _areport(outcome: Outcome[Any], run_manager: Any, start: int = 0) -> None:
        if run_manager is None or not run_manager.handlers:
            return
        config = _events_config(run_manager, AsyncCallbackManager)
        for attempt in outcome.attempts[start:]:
            await adispatch_custom_event(ATTEMPT_EVENT, attempt.as_dict(), config=config)

    def _result(self, outcome: Outcome[ChatResult]) -> ChatResult:
        """The candidate's result, its messages naming the fallback run (updated in place: the
        result and its messages were made for this call)."""
        meta = self._fallback_metadata(outcome)
        generations = outcome.value.generations
        for generation in generations:
            generation.message.response_metadata = {**generation.message.response_metadata,
                                                    **meta}
        return ChatResult(generations=generations, llm_output={
            **(outcome.value.llm_output or {}), **_attempts.answered_by(outcome.value)})

    # -- calls ----------------------------------------------------------------------------------
    #
    # A candidate that is a chat model (possibly under bind/bind_tools bindings) runs inside this
    # run: its _generate/_stream get this run's manager, so callbacks see one chat-model run per
    # call (one start, one end, usage counted once) and tokens stream once. Anything else runs
    # as a child runnable. The public invoke/stream would start a run of their own, so this calls
    # the private hooks they call (_generate_with_cache, _should_stream, _stream): langchain-core
    # is pinned to the releases checked to have them (unit_tests/test_langchain_hooks.py).

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        session = self._session(messages, kwargs)

        def call(target: Runnable) -> ChatResult:
            unwrapped = _unwrap(target)
            if unwrapped is None:
                message = target.invoke(messages, self._child_config(run_manager), stop=stop,
                                        **kwargs)
                return ChatResult(generations=[ChatGeneration(message=message)])
            model, bound = unwrapped
            return _attempts.attempted(  # the attempt as a child run, for tracing
                model, messages, stop, _call_kwargs(bound, kwargs), run_manager,
                lambda: model._generate_with_cache(
                    messages, stop=stop, run_manager=run_manager,
                    **self._with_session(model, _call_kwargs(bound, kwargs), session)))

        outcome = self._policy.run(self._candidates(), call,
                                   needs=self._needs(messages, kwargs), session=session)
        self._report(outcome, run_manager)
        return self._result(outcome)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        session = self._session(messages, kwargs)

        async def call(target: Runnable) -> ChatResult:
            unwrapped = _unwrap(target)
            if unwrapped is None:
                message = await target.ainvoke(messages, self._child_config(run_manager),
                                               stop=stop, **kwargs)
                return ChatResult(generations=[ChatGeneration(message=message)])
            model, bound = unwrapped
            return await _attempts.aattempted(
                model, messages, stop, _call_kwargs(bound, kwargs), run_manager,
                lambda: model._agenerate_with_cache(
                    messages, stop=stop, run_manager=run_manager,
                    **self._with_session(model, _call_kwargs(bound, kwargs), session)))

        outcome = await self._policy.arun(self._candidates(), call,
                                          needs=self._needs(messages, kwargs), session=session)
        await self._areport(outcome, run_manager)
        return self._result(outcome)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        chosen: list[Outcome[None]] = []
        session = self._session(messages, kwargs)

        def starting(conversation: list[BaseMessage]) -> Callable[[Runnable], Iterator[Any]]:
            def start(target: Runnable) -> Iterator[ChatGenerationChunk]:
                unwrapped = _unwrap(target)
                if unwrapped is None:
                    return (self._emit(_as_generation_chunk(c), run_manager)
                            for c in target.stream(conversation, self._child_config(run_manager),
                                                   stop=stop, **kwargs))
                model, bound = unwrapped
                call_kwargs = self._with_session(model, _call_kwargs(bound, kwargs), session)
                if model._should_stream(async_api=False, run_manager=run_manager,
                                        **{**call_kwargs, "stream": True}):
                    return self._held(model._stream(conversation, stop=stop,
                                                    run_manager=run_manager, **call_kwargs))
                result = model._generate_with_cache(conversation, stop=stop,
                                                    run_manager=run_manager, **call_kwargs)
                return iter([self._emit(_as_generation_chunk(result.generations[0].message),
                                        run_manager)])
            return _attempts.traced_start(start, conversation, stop, kwargs, run_manager)

        sent, marked, reported = _Sent(messages), 0, 0
        try:
            for chunk in self._policy.stream(
                    self._candidates(), starting(messages), needs=self._needs(messages, kwargs),
                    on_select=chosen.append, session=session,
                    resume=(lambda exc: sent.resume(starting)) if self.resume_streams else None):
                if len(chosen) > marked:  # a candidate's first chunk names it
                    chunk = self._mark(chunk, chosen[0]) if not marked else \
                        self._mark_resumed(chunk, chosen[-1])
                    marked = len(chosen)
                    self._report(chosen[-1], run_manager, reported)
                    reported = len(chosen[-1].attempts)
                yield sent.add(chunk)
        except Exception as exc:
            error = sent.interrupted(exc)
            if error is exc:
                raise
            raise error from exc
        if not sent.chunks and chosen:  # the candidate streamed nothing: say who, all the same
            yield self._mark(ChatGenerationChunk(message=AIMessageChunk(content="")), chosen[0])

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        chosen: list[Outcome[None]] = []
        session = self._session(messages, kwargs)

        def starting(conversation: list[BaseMessage]) -> Callable[[Runnable], AsyncIterator[Any]]:
            async def start(target: Runnable) -> AsyncIterator[ChatGenerationChunk]:
                unwrapped = _unwrap(target)
                if unwrapped is None:
                    async for c in target.astream(conversation, self._child_config(run_manager),
                                                  stop=stop, **kwargs):
                        generation = _as_generation_chunk(c)
                        if run_manager is not None:
                            await run_manager.on_llm_new_token(generation.text, chunk=generation)
                        yield generation
                    return
                model, bound = unwrapped
                call_kwargs = self._with_session(model, _call_kwargs(bound, kwargs), session)
                if model._should_stream(async_api=True, run_manager=run_manager,
                                        **{**call_kwargs, "stream": True}):
                    async for generation in self._aheld(model._astream(
                            conversation, stop=stop, run_manager=run_manager, **call_kwargs)):
                        yield generation
                    return
                result = await model._agenerate_with_cache(conversation, stop=stop,
                                                           run_manager=run_manager,
                                                           **call_kwargs)
                generation = _as_generation_chunk(result.generations[0].message)
                if run_manager is not None:
                    await run_manager.on_llm_new_token(generation.text, chunk=generation)
                yield generation
            return _attempts.traced_astart(start, conversation, stop, kwargs, run_manager)

        sent, marked, reported = _Sent(messages), 0, 0
        try:
            async for chunk in self._policy.astream(
                    self._candidates(), starting(messages), needs=self._needs(messages, kwargs),
                    on_select=chosen.append, session=session,
                    resume=(lambda exc: sent.resume(starting)) if self.resume_streams else None):
                if len(chosen) > marked:  # a candidate's first chunk names it
                    chunk = self._mark(chunk, chosen[0]) if not marked else \
                        self._mark_resumed(chunk, chosen[-1])
                    marked = len(chosen)
                    await self._areport(chosen[-1], run_manager, reported)
                    reported = len(chosen[-1].attempts)
                yield sent.add(chunk)
        except Exception as exc:
            error = sent.interrupted(exc)
            if error is exc:
                raise
            raise error from exc
        if not sent.chunks and chosen:
            yield self._mark(ChatGenerationChunk(message=AIMessageChunk(content="")), chosen[0])

    def _held(self, chunks: Iterator[ChatGenerationChunk]) -> Iterator[ChatGenerationChunk]:
        """With ``resume_streams``: a candidate's tool-call chunks wait for the end of its
        stream, so a cut mid-call sends the caller none of it and the next candidate starts
        the call afresh. Without, the chunks pass as they come."""
        if not self.resume_streams:
            yield from chunks
            return
        held = []
        for chunk in chunks:
            if getattr(chunk.message, "tool_call_chunks", None):
                held.append(chunk)
            else:
                yield chunk
        yield from held

    async def _aheld(self, chunks: AsyncIterator[ChatGenerationChunk],
                     ) -> AsyncIterator[ChatGenerationChunk]:
        held = []
        async for chunk in chunks:
            if self.resume_streams and getattr(chunk.message, "tool_call_chunks", None):
                held.append(chunk)
            else:
                yield chunk
        for chunk in held:
            yield chunk

    @staticmethod
    def _mark_resumed(generation: ChatGenerationChunk,
                      outcome: Outcome[None]) -> ChatGenerationChunk:
        """The first chunk a resuming candidate sends, naming it and the attempts so far."""
        meta = {**generation.message.response_metadata,
                "fallback_resumed_by": outcome.candidate.name,
                "fallback_resumed_attempts": [a.as_dict() for a in outcome.attempts]}
        return ChatGenerationChunk(
            message=generation.message.model_copy(update={"response_metadata": meta}),
            generation_info=generation.generation_info)

    @staticmethod
    def _emit(generation: ChatGenerationChunk, run_manager: Any) -> ChatGenerationChunk:
        if run_manager is not None:
            run_manager.on_llm_new_token(generation.text, chunk=generation)
        return generation

    def _mark(self, generation: ChatGenerationChunk,
              outcome: Outcome[None]) -> ChatGenerationChunk:
        """The first chunk of a stream, naming the answering candidate (and the failures before
        it) in its response_metadata. Only the first chunk says so, whatever the candidate puts
        in its own chunks' metadata, so the merged message has each once (chunks that both
        carried a string would merge it as "xx")."""
        message = generation.message
        meta = {**message.response_metadata, **self._fallback_metadata(outcome)}
        return ChatGenerationChunk(message=message.model_copy(update={"response_metadata": meta}),
                                   generation_info=generation.generation_info)

    # -- tools and structured output -----------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind ``tools`` on every candidate (each in its own provider's format).

        Returns a FallbackChatModel whose candidates are the bound models. Binding again binds on
        the original candidates, replacing the earlier tools. A candidate that cannot bind these
        tools (its bind_tools raises NotImplementedError, or TypeError/ValueError for a tool or
        ``tool_choice`` it does not take) is skipped while they are bound. When no candidate can,
        the first candidate's own error is raised, the others' noted on it.
        """
        # A tracing-only key (set by BaseChatModel.with_structured_output): this run reports it.
        ls_format = kwargs.pop("ls_structured_output_format", None)
        choice = {} if tool_choice is None else {"tool_choice": tool_choice}
        bound: list[Runnable | bool | None] = [
            False if r is None else r for r in self._each_candidate(
                lambda model: model.bind_tools(tools, **choice, **kwargs),
                "bind these tools", "Fix the tools or tool_choice, or add a tool-calling chat "
                "model.")]
        new = self._rebound(bound)
        new._tools = [convert_to_openai_tool(t) for t in tools] if tools else None
        new._tool_choice = tool_choice
        return new.bind(ls_structured_output_format=ls_format) if ls_format else new

    def _rebound(self, bound: list[Runnable | bool | None],
                 left_out: frozenset[int] = frozenset()) -> FallbackChatModel:
        """A copy of this set whose candidates are ``bound`` (per candidate: its binding, None
        for the model itself, False when it cannot bind the tools), those in ``left_out``
        never called. Bindings replace earlier ones: they are made on the original models."""
        new = self.model_copy()
        new._policy = self._policy
        new._endpoints = self._endpoints
        new._bound = bound
        new._left_out = left_out
        new._candidate_list = None
        new._tools = None
        new._tool_choice = None
        return new

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        include_raw: bool = False,
        method: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | BaseModel]:
        """Answers parsed into ``schema``, with the same failover rules.

        ``method=None``: each candidate answers the way its own ``with_structured_output``
        would by default (``ChatModelPlug``: json_schema where its backend constrains output,
        function_calling otherwise), its answer parsed by that candidate's own parser.
        ``"function_calling"``: the schema is bound as a forced tool on every candidate (the
        method every tool-calling model shares). Either way the set runs as one chat model run.
        Any other ``method`` (``"json_schema"``, ``"json_mode"``) and extra keyword arguments
        (``strict=``) go to each candidate's own ``with_structured_output``; the candidates are
        then tried in order as child runs. As with :meth:`bind_tools`, a candidate whose
        ``with_structured_output`` refuses (NotImplementedError, or TypeError/ValueError for a
        schema or option it does not take) is skipped; when every one refuses, the first one's
        error is raised, the others' noted on it. An answer cut by its candidate's max_tokens
        raises OutputTruncatedError (in ``parsing_error`` with ``include_raw``).
        """
        if method is None and not kwargs:
            return self._own_structured_output(schema, include_raw)
        if method == "function_calling" and not kwargs:
            return self._forced_tool_output(schema, include_raw)
        options = {**({"method": method} if method else {}), **kwargs}
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
        structured = self._each_candidate(
            lambda model: model.with_structured_output(schema, include_raw=include_raw,
                                                       **options),
            f"give structured output ({shown})",
            "Fix the schema or the options, or add a chat model that supports them.")
        runnables = [Candidate(name, runnable, getattr(model, "profile", None), endpoint)
                     for model, name, runnable, endpoint in zip(
                         self.models, self.names, structured, self._endpoints, strict=True)
                     if runnable is not None]
        return FallbackRunnable(runnables, self._policy)

    def _own_structured_output(self, schema: dict[str, Any] | type | None,
                               include_raw: bool) -> Runnable:
        """``with_structured_output`` with no method: each candidate bound for its own default
        method and its answer parsed by its own parser (see :func:`_own_structured_parts`),
        the set run as one chat model run."""
        if schema is None:
            raise ValueError("schema is required for structured output with no method.")
        parts = self._each_candidate(
            lambda model: _own_structured_parts(model, schema), "give structured output",
            "Fix the schema, or add a chat model that supports structured output.")
        llm = self._rebound([p[0] if p else False for p in parts],
                            frozenset(i for i, p in enumerate(parts) if p is None))
        parsers: dict[str, Runnable] = {}
        methods: list[Any] = []
        for name, part in zip(self.names, parts, strict=True):
            if part is not None:
                parsers.setdefault(name, part[1])
                method = _structured_method(part[0])
                if method not in methods:
                    methods.append(method)
        traced = {"kwargs": {"method": methods[0] if len(methods) == 1 else methods},
                  "schema": schema}
        return structured_runnable(llm.bind(ls_structured_output_format=traced),
                                   _AnswerParser(parsers), include_raw=include_raw,
                                   max_tokens=self._budget_of)

    def _forced_tool_output(self, schema: dict[str, Any] | type | None,
                            include_raw: bool) -> Runnable:
        """``with_structured_output`` by a forced tool call, as BaseChatModel builds it, but an
        answer cut by its candidate's max_tokens raises OutputTruncatedError (naming it), as a
        single ChatModelPlug's does, instead of parsing into None or a partial object."""
        if schema is None:
            raise ValueError("schema is required for method='function_calling'.")
        return structured_runnable(_forced_tool_request(self, schema), forced_tool_parser(schema),
                                   include_raw=include_raw, max_tokens=self._budget_of)

    def _budget_of(self, message: BaseMessage) -> int | None:
        """The max_tokens of the candidate that answered ``message`` (named in its metadata)."""
        name = (message.response_metadata or {}).get("fallback_model")
        for model, candidate in zip(self.models, self.names, strict=True):
            if candidate == name:
                budget = _ls_params(model).get("ls_max_tokens")
                return budget if isinstance(budget, int) else None
        return None

    def _each_candidate(self, make: Callable[[BaseChatModel], Runnable], what: str,
                        fix: str) -> list[Runnable | None]:
        """``make(candidate)`` for each candidate (bind_tools, with_structured_output), None
        for one that refuses: NotImplementedError, or TypeError/ValueError for a tool, schema
        or option it does not take. Such a candidate is skipped while the result is used. When
        every candidate refuses, the first one's error is raised, every refusal noted on it."""
        made: list[Runnable | None] = []
        refused: list[tuple[str, Exception]] = []
        for model, name in zip(self.models, self.names, strict=True):
            try:
                made.append(make(model))
            except (NotImplementedError, TypeError, ValueError) as exc:
                logger.info("Candidate %r cannot %s (%s: %s); it is skipped.", name, what,
                            type(exc).__name__, exc)
                refused.append((name, exc))
                made.append(None)
        if len(refused) == len(made):
            first = refused[0][1]
            first.add_note(f"No candidate of this FallbackChatModel can {what}: " + "; ".join(
                f"{name} ({type(e).__name__}: {e})" for name, e in refused) + f". {fix}")
            raise first
        return made


def _forced_tool_request(model: BaseChatModel, schema: dict[str, Any] | type) -> Runnable:
    """``model`` bound to answer by a forced call of ``schema`` as a tool, and saying so to
    tracing (``ls_structured_output_format``)."""
    return model.bind_tools([schema], tool_choice="any", ls_structured_output_format={
        "kwargs": {"method": "function_calling"}, "schema": schema})


def _own_structured_parts(model: BaseChatModel, schema: dict[str, Any] | type,
                          ) -> tuple[Runnable, Runnable]:
    """How ``model`` gives structured output by default, as (request, parser): its own
    ``with_structured_output(schema)`` split where it is the model under bindings piped into
    a parser (as BaseChatModel, ChatModelPlug and the partner packages build it), so the
    request can run inside a fallback run. Anything else, and a nested FallbackChatModel
    (whose answers name its own candidates, not itself), gets a forced tool call."""
    if not isinstance(model, FallbackChatModel):
        structured = model.with_structured_output(schema)
        if isinstance(structured, RunnableSequence) and _unwrap(structured.first) is not None:
            rest = structured.steps[1:]
            return structured.first, rest[0] if len(rest) == 1 else RunnableSequence(*rest)
    return _forced_tool_request(model, schema), forced_tool_parser(schema)


def _structured_method(request: Runnable) -> Any:
    """The structured-output method a candidate's request was bound for, as it tells tracing
    (its ``ls_structured_output_format``), or None when it does not say."""
    unwrapped = _unwrap(request)
    traced = unwrapped[1].get("ls_structured_output_format") if unwrapped else None
    return ((traced or {}).get("kwargs") or {}).get("method")


class _AnswerParser(Runnable[BaseMessage, Any]):
    """Parses a fallback set's structured answer with the parser of the candidate that gave
    it (named in its ``response_metadata["fallback_model"]``, on a stream's first chunk):
    candidates give structured output in different ways (a JSON answer, a tool call).
    Candidates of one name share the first one's parser; an answer naming none of them is
    parsed by the first candidate's."""

    def __init__(self, parsers: dict[str, Runnable]) -> None:
        self.parsers = parsers
        self.first = next(iter(parsers.values()))

    def __repr__(self) -> str:
        return f"_AnswerParser(parsers={self.parsers!r})"

    def _parser(self, message: BaseMessage) -> Runnable:
        name = (message.response_metadata or {}).get("fallback_model")
        return self.parsers.get(name, self.first) if isinstance(name, str) else self.first

    def invoke(self, input: BaseMessage, config: RunnableConfig | None = None,
               **kwargs: Any) -> Any:
        return self._parser(input).invoke(input, config, **kwargs)

    async def ainvoke(self, input: BaseMessage, config: RunnableConfig | None = None,
                      **kwargs: Any) -> Any:
        return await self._parser(input).ainvoke(input, config, **kwargs)

    def transform(self, input: Iterator[BaseMessage], config: RunnableConfig | None = None,
                  **kwargs: Any) -> Iterator[Any]:
        first = next(input, None)
        if first is None:
            return
        yield from self._parser(first).transform(itertools.chain([first], input), config,
                                                 **kwargs)

    async def atransform(self, input: AsyncIterator[BaseMessage],
                         config: RunnableConfig | None = None, **kwargs: Any,
                         ) -> AsyncIterator[Any]:
        first = await anext(input, None)
        if first is None:
            return

        async def chunks() -> AsyncIterator[BaseMessage]:
            yield first
            async for chunk in input:
                yield chunk

        async for output in self._parser(first).atransform(chunks(), config, **kwargs):
            yield output


class FallbackRunnable(Runnable[LanguageModelInput, Any]):
    """Runnables tried in order under a fallback policy (the result of
    ``FallbackChatModel.with_structured_output``)."""

    def __init__(self, candidates: list[Candidate[Runnable]], policy: FallbackPolicy) -> None:
        self.candidates = candidates
        self.policy = policy

    def _needs(self, value: LanguageModelInput) -> Needs | None:
        try:
            return request_needs(_as_messages(value), None, None)
        except Exception:
            return None

    def _invoke(self, value: LanguageModelInput, run_manager: CallbackManagerForChainRun,
                config: RunnableConfig, **kwargs: Any) -> Any:
        child = patch_config(config, callbacks=run_manager.get_child())
        return self.policy.run(self.candidates, lambda r: r.invoke(value, child, **kwargs),
                               needs=self._needs(value)).value

    async def _ainvoke(self, value: LanguageModelInput,
                       run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig,
                       **kwargs: Any) -> Any:
        child = patch_config(config, callbacks=run_manager.get_child())
        outcome = await self.policy.arun(self.candidates,
                                         lambda r: r.ainvoke(value, child, **kwargs),
                                         needs=self._needs(value))
        return outcome.value

    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None,
               **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, ensure_config(config), **kwargs)

    async def ainvoke(self, input: LanguageModelInput, config: RunnableConfig | None = None,
                      **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, ensure_config(config),
                                             **kwargs)

    def stream(self, input: LanguageModelInput, config: RunnableConfig | None = None,
               **kwargs: Any) -> Iterator[Any]:
        yield from self.policy.stream(self.candidates,
                                      lambda r: r.stream(input, config, **kwargs),
                                      needs=self._needs(input))

    async def astream(self, input: LanguageModelInput, config: RunnableConfig | None = None,
                      **kwargs: Any) -> AsyncIterator[Any]:
        async for item in self.policy.astream(self.candidates,
                                              lambda r: r.astream(input, config, **kwargs),
                                              needs=self._needs(input)):
            yield item


__all__ = ["ATTEMPT_EVENT", "FallbackChatModel", "FallbackRunnable", "RetryOn", "combined_profile"]

"""Every OpenAI-compatible endpoint through the official ``openai`` SDK.

One backend serves OpenAI itself, Gemini's OpenAI-compatible endpoint, the local servers
(llama-server, vLLM, SGLang, LM Studio, Ollama's /v1, transformers serve) and the compatible
clouds; the registry row supplies the base URL, the API-key variable and each server's quirks
(how reasoning is switched, o-series model ids, named tool_choice, ``/props``). Timeouts and retries
are the SDK's own (``timeout`` / ``max_retries`` go to the client unchanged). Reasoning arrives
as ``reasoning_content`` / ``reasoning`` fields or as ``<think>`` tags in the text, and is
routed out of the answer either way; text streams as it arrives unless the model may start
inside a template-opened ``<think>`` (see ``_starts_in_thinking``). A named tool_choice goes to
llama-server, which reads tool_choice only as a string, as "required" over just that tool;
llama-server's ``/props`` tells, before the first request, whether its template can call tools.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

from modelplug.backends import tooling
from modelplug.backends.base import collect_stream, maps_errors
from modelplug.backends.networked import NetworkedBackend
from modelplug.backends.reasoning import ThinkTagSplitter, split_think_tags
from modelplug.catalog import models_for
from modelplug.errors import RefusalError, UnsupportedCapabilityError
from modelplug.profile import Profile
from modelplug.types import (
    THINKING_BLOCKS,
    TOOL_CHOICE_MODES,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    Message,
    ToolCall,
    ToolCallDelta,
    Usage,
    normalise_tool_choice,
    tool_name,
)

#: Local servers ignore the key, but the SDK refuses to build a client without one. An explicit
#: placeholder also keeps the SDK from sending a real OPENAI_API_KEY to a local server.
LOCAL_PLACEHOLDER_KEY = "modelplug-local"

PROBE_TIMEOUT_S = 2.0


class OpenAICompatBackend(NetworkedBackend):
    """Chat and embeddings over ``/v1/chat/completions`` and ``/v1/embeddings``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._props: dict[str, Any] | None = None  # llama-server's /props, once probed
        if self.spec.kind == "cloud":  # local servers take no key
            self.require_api_key()  # a missing key fails here, before any request

    # -- configuration -------------------------------------------------------------------------

    @property
    def base_url(self) -> str | None:
        return self.settings.get("base_url") or self.spec.base_url

    @property
    def is_o_series(self) -> bool:
        """Whether the row names this model an o-series reasoning model
        (``ProviderSpec.o_series``): max_completion_tokens, temperature 1, reasoning always on."""
        pattern = self.spec.o_series
        return pattern is not None and re.match(pattern, self.ref.model_id) is not None

    def _api_key(self) -> str:
        key = self.api_key()
        return LOCAL_PLACEHOLDER_KEY if key is None else str(self.secret_value(key))

    def secrets(self) -> list[Any]:
        key = self._api_key()
        return [] if key == LOCAL_PLACEHOLDER_KEY else [key]

    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"api_key": self._api_key(), "base_url": self.base_url}
        for name in ("timeout", "max_retries", "default_headers"):
            if self.settings.get(name) is not None:  # unset: the SDK's own default
                kwargs[name] = self.settings[name]
        return kwargs

    def new_client(self, is_async: bool) -> Any:
        import openai

        return (openai.AsyncOpenAI if is_async else openai.OpenAI)(**self._client_kwargs())

    # -- what the model can do -------------------------------------------------------------------

    def probe(self) -> None:
        """llama-server's ``/props``, asked once before the first request of a model string
        without ``;flags``: whether its chat template renders tool calls (without, the server
        ignores tools and answers in text), image input, the context size. Unreachable: {}."""
        if not self.spec.props_probe or self._props is not None or (
                self.ref.tools is not None):
            return
        import httpx

        root = (self.base_url or "").rstrip("/").removesuffix("/v1")
        try:
            answer = httpx.get(f"{root}/props", timeout=PROBE_TIMEOUT_S)
            self._props = answer.json() if answer.is_success else {}
        except (httpx.HTTPError, ValueError):
            self._props = {}  # the request itself will say what is wrong

    def profile(self) -> Profile:
        """The catalog (or ``;flags``), refined by what a llama-server said at ``/props``."""
        base = super().profile()
        props = self._props or {}
        tools = (props.get("chat_template_caps") or {}).get("supports_tool_calls")
        vision = (props.get("modalities") or {}).get("vision")
        context = (props.get("default_generation_settings") or {}).get("n_ctx")
        return base.merged(tool_calling=tools, tool_choice=tools, tool_call_streaming=tools,
                           image_inputs=vision, max_input_tokens=context)

    # -- requests ------------------------------------------------------------------------------

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        """The chat.completions.create keyword arguments for ``request``."""
        self.check(request)
        body: dict[str, Any] = {"model": self.ref.model_id,
                                "messages": _for_openai(request.messages)}
        if request.tools:
            body["tools"] = request.tools
        if request.tool_choice is not None:
            self._set_tool_choice(request, body)
        if request.response_format is not None:
            body["response_format"] = request.response_format
        for name in ("temperature", "top_p", "max_tokens", "seed", "parallel_tool_calls"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        if request.stop:  # an empty list means no stop sequences; some APIs reject []
            body["stop"] = request.stop
        extra_body: dict[str, Any] = {}
        self._reasoning_switch(request.reasoning, body, extra_body)
        self._prefill(request, extra_body)
        extra_body.update(self.settings.get("model_kwargs") or {})
        extra_body.update(request.extra)
        if self.is_o_series:
            if "max_tokens" in body:
                body["max_completion_tokens"] = body.pop("max_tokens")
            body["temperature"] = 1
        if extra_body:
            body["extra_body"] = extra_body
        if request.headers:
            body["extra_headers"] = dict(request.headers)
        return body

    def _prefill(self, request: ChatRequest, extra_body: dict[str, Any]) -> None:
        """A conversation ending in an assistant message with text asks for its continuation
        (a prefill), in the way the row says (``ProviderSpec.prefill``): llama-server reads it
        so as sent; vLLM and SGLang need ``continue_final_message`` (and no generation prompt)
        in the body, or they would answer it as a finished turn."""
        if self.spec.prefill != "continue_final_message":
            return
        if tooling.split_prefill(request.messages)[1]:
            extra_body.update(continue_final_message=True, add_generation_prompt=False)

    def _echoed(self, request: ChatRequest) -> str:
        """The prefill this row's server may repeat at the start of its answer
        (``ProviderSpec.prefill_echo``), to be stripped from it; "" for none."""
        return tooling.split_prefill(request.messages)[1] if self.spec.prefill_echo else ""

    def _set_tool_choice(self, request: ChatRequest, body: dict[str, Any]) -> None:
        """ChatRequest's tool_choice on the wire: "auto", "none", "required" ("any" is
        LangChain's and Anthropic's name for it) or one named tool."""
        choice = normalise_tool_choice(request.tool_choice, request.tools)
        if choice in TOOL_CHOICE_MODES:
            body["tool_choice"] = choice
        elif self.spec.named_tool_choice:
            body["tool_choice"] = {"type": "function", "function": {"name": choice}}
        else:
            body["tools"] = [t for t in request.tools or [] if tool_name(t) == choice]
            body["tool_choice"] = "required"

    def check(self, request: ChatRequest) -> None:
        self._check_kind("chat")
        super().check(request)

    def _check_kind(self, use: str) -> None:
        """Refuse, before any request, a catalog model used for what it is not: chat on an
        embedding model, or embeddings on a chat model of a closed catalog (openai, gemini)."""
        info = self.ref.info
        if info is None or info.kind == use:
            return
        if use == "embedding" and not self.spec.closed_catalog:
            return  # a local server may embed with any model it serves
        if info.kind == "embedding":
            raise UnsupportedCapabilityError(
                f"'{self.ref}' is an embedding model and has no chat. Use it for embeddings, "
                f"or chat with a chat model of {self.spec.key!r}.")
        embedders = [m.key for m in models_for(self.spec.key) if m.kind == "embedding"]
        raise UnsupportedCapabilityError(
            f"'{self.ref}' is a chat model and has no embeddings. Use an embedding model: "
            f"{embedders}.")

    def _reasoning_switch(self, on: bool | None, body: dict[str, Any],
                          extra_body: dict[str, Any]) -> None:
        """``reasoning=True/False`` on the wire, as the row says (``ProviderSpec.reasoning_switch``;
        an o-series model always reasons)."""
        if on is None:
            return
        switch = self.spec.reasoning_switch
        if self.is_o_series:
            if not on:
                raise UnsupportedCapabilityError(
                    f"'{self.ref}' is an o-series reasoning model; its reasoning cannot be "
                    "switched off. Leave reasoning unset, or lower it with "
                    "model_kwargs={'reasoning_effort': 'low'}."
                )
        elif switch == "chat_template_kwargs":
            extra_body["chat_template_kwargs"] = {"enable_thinking": on}
        elif switch == "reasoning_effort":
            body["reasoning_effort"] = "medium" if on else "none"
        elif on:
            raise UnsupportedCapabilityError(
                f"reasoning=True has no switch on '{self.ref}'. Use a reasoning model, or pass "
                "the provider's own field through model_kwargs={...}."
            )

    def _starts_in_thinking(self, request: ChatRequest) -> bool:
        """Whether the answer may begin inside a ``<think>`` the chat template opened in the
        prompt (DeepSeek-R1 distills, QwQ, Qwen3 *-Thinking-2507), so that its text must be held
        until a tag (or a reasoning field) shows where the thinking ends.

        Only raw model output on a local server does this, and only for a model declared
        ``;thinking`` whose catalog row does not say it writes its own tags. Cloud APIs (o-series,
        Gemini, DeepSeek) return reasoning in a field or hide it, and catalog models with
        ``thinking_style="tags"`` open their own tag, so their text streams at once. Answers
        and streams are split by this same decision.
        """
        style = self.ref.info.thinking_style if self.ref.info is not None else None
        return (self.spec.kind == "local-server" and self.ref.thinking is True
                and style != "tags" and request.reasoning is not False)

    # -- chat ----------------------------------------------------------------------------------

    @maps_errors
    def chat(self, request: ChatRequest) -> ChatResponse:
        body = self._body(request)
        return self._response(self.client.chat.completions.create(**body), request)

    @maps_errors
    async def achat(self, request: ChatRequest) -> ChatResponse:
        body = self._body(request)
        return self._response(await self.aclient.chat.completions.create(**body), request)

    @maps_errors
    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        body = self._body(request)
        reader = _ChatEventReader(self.spec.key, self.ref.model_id,
                                  self._starts_in_thinking(request), self._echoed(request))
        events = self.client.chat.completions.create(
            **body, stream=True, stream_options={"include_usage": True})
        with events:
            for event in events:
                yield from reader.feed(event)
        yield reader.finish()

    @maps_errors
    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        body = self._body(request)
        reader = _ChatEventReader(self.spec.key, self.ref.model_id,
                                  self._starts_in_thinking(request), self._echoed(request))
        events = await self.aclient.chat.completions.create(
            **body, stream=True, stream_options={"include_usage": True})
        async with events:
            async for event in events:
                for chunk in reader.feed(event):
                    yield chunk
        yield reader.finish()

    def _response(self, completion: Any, request: ChatRequest) -> ChatResponse:
        choice = completion.choices[0]
        message = choice.message
        _check_refusal(self.spec.key, getattr(message, "refusal", None))
        fields = _reasoning_field(message)
        # As _ChatEventReader decides: a reasoning field means the server split the thinking out.
        implicit = self._starts_in_thinking(request) and not fields
        content = message.content or ""
        echoed = self._echoed(request)
        if echoed and content.startswith(echoed):  # the answer repeats its prefill
            content = content[len(echoed):]
        text, reasoning = split_think_tags(content, implicit_open=implicit)
        tool_calls = [
            ToolCall.parse(call.id, call.function.name, call.function.arguments)
            for call in (message.tool_calls or []) if getattr(call, "function", None) is not None
        ]
        return ChatResponse(
            text=text,
            tool_calls=tool_calls,
            reasoning=fields + reasoning,
            usage=_usage(completion.usage),
            finish_reason=choice.finish_reason,
            model=completion.model or self.ref.model_id,
            id=getattr(completion, "id", None) or "",
        )

    # -- raw completion (/v1/completions) -------------------------------------------------------

    def _completion_body(self, request: CompletionRequest) -> dict[str, Any]:
        self._check_kind("chat")
        if not self.spec.has_completions:  # e.g. Google's OpenAI-compatible endpoint
            raise UnsupportedCapabilityError(
                f"{self.spec.description or self.spec.key} has no /completions endpoint; use "
                f"chat completion for '{self.spec.key}:' models.")
        body: dict[str, Any] = {"model": self.ref.model_id, "prompt": request.prompt,
                                "stream": True, "stream_options": {"include_usage": True}}
        for name in ("temperature", "top_p", "max_tokens", "seed"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        if request.stop:
            body["stop"] = request.stop
        extra_body = {**(self.settings.get("model_kwargs") or {}), **request.extra}
        if extra_body:
            body["extra_body"] = extra_body
        return body

    @maps_errors
    def stream_complete(self, request: CompletionRequest) -> Iterator[ChatChunk]:
        reader = _CompletionEventReader(self.ref.model_id)
        with self.client.completions.create(**self._completion_body(request)) as events:
            for event in events:
                yield from reader.feed(event)
        yield reader.finish()

    @maps_errors
    async def astream_complete(self, request: CompletionRequest) -> AsyncIterator[ChatChunk]:
        reader = _CompletionEventReader(self.ref.model_id)
        events = await self.aclient.completions.create(**self._completion_body(request))
        async with events:
            async for event in events:
                for chunk in reader.feed(event):
                    yield chunk
        yield reader.finish()

    async def acomplete(self, request: CompletionRequest) -> ChatResponse:
        return collect_stream([chunk async for chunk in self.astream_complete(request)])

    # -- embeddings ----------------------------------------------------------------------------

    @maps_errors
    def embed(self, texts: list[str]) -> list[list[float]]:
        self._check_kind("embedding")
        if not texts:
            return []
        result = self.client.embeddings.create(model=self.ref.model_id, input=texts,
                                               encoding_format="float")
        return [item.embedding for item in sorted(result.data, key=lambda d: d.index)]

    @maps_errors
    async def aembed(self, texts: list[str]) -> list[list[float]]:
        self._check_kind("embedding")
        if not texts:
            return []
        result = await self.aclient.embeddings.create(model=self.ref.model_id, input=texts,
                                                      encoding_format="float")
        return [item.embedding for item in sorted(result.data, key=lambda d: d.index)]


class _ChatEventReader:
    """Reads ChatCompletionChunk events as ChatChunks (what :class:`StreamCollector` collects);
    finish reason and usage go on the last chunk."""

    def __init__(self, provider: str, model: str, implicit_think: bool, echoed: str = "") -> None:
        self.provider = provider  # names the row in a refusal
        self.model = model
        self.splitter = ThinkTagSplitter(implicit_open=implicit_think)
        #: A prefill the server may repeat first (see OpenAICompatBackend._echoed): text is
        #: held while it still matches it, and the repeat dropped.
        self.echoed, self.held = echoed, ""
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.id = ""

    def feed(self, event: Any) -> Iterator[ChatChunk]:
        self.model = getattr(event, "model", None) or self.model
        self.id = getattr(event, "id", None) or self.id
        if getattr(event, "usage", None) is not None:
            self.usage = _usage(event.usage)
        for choice in event.choices or []:
            if choice.index not in (0, None):
                continue
            delta = choice.delta
            _check_refusal(self.provider, getattr(delta, "refusal", None))
            field = _reasoning_field(delta) if delta else ""
            if field:  # the server splits reasoning out: the text does not start inside it
                self.splitter.settle_as_text()
            text, reasoning = self.splitter.feed(self._unechoed(delta.content or "")) \
                if delta else ("", "")
            reasoning = field + reasoning
            calls = [
                ToolCallDelta(index=call.index, id=call.id,
                              name=call.function.name if call.function else None,
                              arguments=(call.function.arguments or "") if call.function else "")
                for call in ((delta.tool_calls if delta else None) or [])
            ]
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            if text or reasoning or calls:
                yield ChatChunk(text=text, reasoning=reasoning, tool_calls=calls,
                                model=self.model)

    def _unechoed(self, content: str) -> str:
        """``content`` less the echoed prefill at the start of the answer (held while it may
        still be part of it); any other text as it comes."""
        if not self.echoed:
            return content
        self.held += content
        if self.echoed.startswith(self.held):
            if len(self.held) < len(self.echoed):
                return ""  # so far, all of it could be the repeat
            self.echoed = self.held = ""  # exactly the prefill: nothing new yet
            return ""
        text = self.held.removeprefix(self.echoed)  # the repeat dropped, or none came
        self.echoed = self.held = ""
        return text

    def finish(self) -> ChatChunk:
        # Text still held was no repeat (a server repeats the whole prefill at once): a short
        # answer that only began like the prefill.
        held, self.held, self.echoed = self.held, "", ""
        text, reasoning = self.splitter.feed(held) if held else ("", "")
        tail, tail_reasoning = self.splitter.flush()
        text, reasoning = text + tail, reasoning + tail_reasoning
        # A server that never names a finish reason ended the stream normally (errors raise).
        return ChatChunk(text=text, reasoning=reasoning, usage=self.usage,
                         finish_reason=self.finish_reason or "stop", model=self.model,
                         id=self.id)


class _CompletionEventReader:
    """Reads completion stream events as ChatChunks; finish reason and usage go on the last
    chunk."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def feed(self, event: Any) -> Iterator[ChatChunk]:
        self.model = getattr(event, "model", None) or self.model
        if getattr(event, "usage", None) is not None:
            self.usage = _usage(event.usage)
        for choice in event.choices or []:
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            if choice.index in (0, None) and choice.text:
                yield ChatChunk(text=choice.text, model=self.model)

    def finish(self) -> ChatChunk:
        return ChatChunk(usage=self.usage, finish_reason=self.finish_reason or "stop",
                         model=self.model)


def _check_refusal(provider: str | None, refusal: str | None) -> None:
    """OpenAI's ``refusal`` field: the model declined (structured outputs), so there is no answer."""
    if refusal:
        raise RefusalError(
            f"The model refused to answer: {refusal!r}. Rephrase the request, or relax the "
            "response_format; retrying the same request will be refused again.",
            provider=provider)


#: Content parts of an Anthropic answer that chat completions has no type for (signed thinking).
_THINKING_PARTS = frozenset({"thinking", "redacted_thinking"})


def _for_openai(messages: list[Message]) -> list[Message]:
    """The messages as chat completions takes them, whoever wrote them: signed thinking
    (``thinking_blocks``, or thinking content parts of an Anthropic-style answer) is left out,
    as reasoning text always is, and Anthropic's ``cache_control`` markers are dropped from
    content parts. A conversation that moves here from Anthropic is not refused for them."""
    out = []
    for message in messages:
        if THINKING_BLOCKS in message:
            message = {k: v for k, v in message.items() if k != THINKING_BLOCKS}
        content = message.get("content")
        if isinstance(content, list) and any(
                isinstance(p, dict) and (p.get("type") in _THINKING_PARTS or "cache_control" in p)
                for p in content):
            parts = [{k: v for k, v in p.items() if k != "cache_control"}
                     if isinstance(p, dict) else p for p in content
                     if not (isinstance(p, dict) and p.get("type") in _THINKING_PARTS)]
            empty = None if message.get("tool_calls") else ""
            message = {**message, "content": parts or empty}
        out.append(message)
    return out


def _reasoning_field(message: Any) -> str:
    """``reasoning_content`` (DeepSeek, vLLM, llama-server) or ``reasoning`` (OpenRouter,
    Ollama's /v1, newer vLLM): fields the SDK does not declare, kept as extras."""
    extra = getattr(message, "model_extra", None) or {}
    for name in ("reasoning_content", "reasoning"):
        value = extra.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _usage(usage: Any) -> Usage | None:
    if usage is None:
        return None
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    return Usage(
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        cache_read_tokens=getattr(prompt_details, "cached_tokens", None) or 0,
        reasoning_tokens=getattr(completion_details, "reasoning_tokens", None) or 0,
        audio_input_tokens=getattr(prompt_details, "audio_tokens", None) or 0,
        audio_output_tokens=getattr(completion_details, "audio_tokens", None) or 0,
    )

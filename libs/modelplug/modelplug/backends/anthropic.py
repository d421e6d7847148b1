"""Anthropic's Messages API through the official ``anthropic`` SDK.

Requests arrive as OpenAI-format messages and are converted here, once, at request time:

- system (and developer) messages become the top-level ``system`` prompt;
- consecutive messages of one role merge (the API wants user/assistant turns alternating);
- assistant ``tool_calls`` become ``tool_use`` blocks and tool messages ``tool_result`` blocks;
- images: a ``data:`` URL becomes a base64 source, an http(s) URL a url source.

Thinking is native (``thinking`` blocks, never ``<think>`` tags) and follows the model's
``thinking_style``: ``enabled`` sends ``{"type": "enabled", "budget_tokens": N}``; ``adaptive``
sends ``{"type": "adaptive", "display": "summarized"}`` and drops temperature/top_p. Each
thinking (and redacted_thinking) block comes back whole, signature included, in
``thinking_blocks``; an assistant message that carries them sends them back first, as the API
requires of the turn whose tool calls the thinking led to.

Structured output: a ``json_schema`` response format uses the API's own structured outputs
(``output_config.format``), with the schema passed through ``anthropic.transform_schema`` so it
fits what the API accepts. The API has no free-form JSON mode, so ``json_object`` is a forced
call of a tool whose input is any object; its input comes back as the text of the answer.

``cache_prompt=True`` puts ephemeral ``cache_control`` breakpoints on the system prompt and the
last tool definition (the stable prefix an agent resends every turn).

Usage: Anthropic's ``input_tokens`` excludes cached tokens; :class:`Usage.input_tokens` is the
total input (plain + cache read + cache creation), as LangChain's ``usage_metadata`` expects,
with the two cache counts in their own fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

from modelplug.backends.base import maps_errors
from modelplug.backends.networked import NetworkedBackend
from modelplug.errors import ConfigurationError, RefusalError, UnsupportedCapabilityError
from modelplug.profile import Profile
from modelplug.types import (
    THINKING_BLOCKS,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Message,
    ToolCall,
    ToolCallDelta,
    Usage,
    normalise_tool_choice,
)

#: max_tokens when none is given. The API requires one; the SDK refuses non-streaming requests
#: whose max_tokens implies more than ten minutes of generation, so this stays modest.
DEFAULT_MAX_TOKENS = 4096
#: Thinking budget of "enabled"-style models when thinking_budget is not given (API minimum 1024).
DEFAULT_THINKING_BUDGET = 2048
MIN_THINKING_BUDGET = 1024
#: The tool that carries a json_object answer (the API has no plain JSON mode).
JSON_TOOL_NAME = "json_response"

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}

_DATA_URL = re.compile(r"^data:(?P<media>[\w/+.-]+);base64,(?P<data>.*)$", re.DOTALL)


class AnthropicBackend(NetworkedBackend):
    """Claude models through ``anthropic.Anthropic`` / ``anthropic.AsyncAnthropic``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Fail at construction, before any request: a missing key or a bad budget.
        self._api_key = self.require_api_key()
        self._thinking_budget = self._checked_budget()

    # -- configuration --------------------------------------------------------------------------

    def _checked_budget(self) -> int | None:
        budget = self.settings.get("thinking_budget")
        if budget is None:
            return None
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < MIN_THINKING_BUDGET:
            raise ConfigurationError(
                f"thinking_budget must be an int of at least {MIN_THINKING_BUDGET} tokens "
                f"(Anthropic's minimum); got {budget!r}."
            )
        if self.thinking_style == "adaptive":
            raise ConfigurationError(
                f"'{self.ref}' uses adaptive thinking, which takes no token budget; remove "
                f"thinking_budget={budget} (reasoning=True switches thinking on)."
            )
        return budget

    @property
    def thinking_style(self) -> str:
        info = self.ref.info
        return (info.thinking_style if info is not None else None) or "enabled"

    @property
    def cache_prompt(self) -> bool:
        return bool(self.settings.get("cache_prompt"))

    def secrets(self) -> list[Any]:
        return [self._api_key]

    def new_client(self, is_async: bool) -> Any:
        import anthropic

        kwargs: dict[str, Any] = {"api_key": self.secret_value(self._api_key)}
        for name in ("base_url", "timeout", "max_retries", "default_headers"):
            if self.settings.get(name) is not None:
                kwargs[name] = self.settings[name]
        return (anthropic.AsyncAnthropic if is_async else anthropic.Anthropic)(**kwargs)

    def profile(self) -> Profile:
        known = self.ref.info is not None
        return Profile.from_ref(self.ref).merged(structured_output=True if known else None)

    # -- request building ---------------------------------------------------------------------

    def _thinking_on(self, request: ChatRequest) -> bool:
        if request.reasoning is not None:
            return request.reasoning
        return self._thinking_budget is not None

    def check(self, request: ChatRequest) -> None:
        super().check(request)
        if request.seed is not None:
            raise UnsupportedCapabilityError(
                f"Anthropic's API has no seed; remove seed={request.seed} for '{self.ref}'."
            )
        if not self._thinking_on(request):
            return
        if self.ref.thinking is False:
            raise UnsupportedCapabilityError(
                f"'{self.ref}' has no extended thinking; drop reasoning=True (or use a thinking "
                "model such as 'anthropic:claude-sonnet-4-6')."
            )
        forced = request.tool_choice not in (None, "auto", "none")
        if forced or (request.response_format or {}).get("type") == "json_object":
            what = f"tool_choice={request.tool_choice!r}" if forced else "JSON mode"
            raise UnsupportedCapabilityError(
                f"Anthropic thinking does not allow forced tool use ({what}). Use "
                "tool_choice='auto', structured output with method='json_schema', or "
                "reasoning=False."
            )
        if self.thinking_style == "enabled":
            if request.temperature not in (None, 1, 1.0):
                raise UnsupportedCapabilityError(
                    f"Anthropic thinking needs temperature 1 or unset; got "
                    f"temperature={request.temperature}. Remove it or set reasoning=False."
                )
            if request.top_p is not None and request.top_p < 0.95:
                raise UnsupportedCapabilityError(
                    f"Anthropic thinking needs top_p of at least 0.95 or unset; got "
                    f"top_p={request.top_p}. Remove it or set reasoning=False."
                )

    def build_params(self, request: ChatRequest) -> dict[str, Any]:
        """The keyword arguments of ``messages.create`` for ``request`` (no ``stream``)."""
        system, messages = convert_messages(request.messages)
        params: dict[str, Any] = {"model": self.ref.model_id, "messages": messages}
        if system:
            if self.cache_prompt:
                system[-1] = {**system[-1], "cache_control": {"type": "ephemeral"}}
            params["system"] = system

        thinking = self._thinking_on(request)
        budget = None
        if thinking and self.thinking_style == "adaptive":
            params["thinking"] = {"type": "adaptive", "display": "summarized"}
        elif thinking:
            budget = self._thinking_budget or DEFAULT_THINKING_BUDGET
            params["thinking"] = {"type": "enabled", "budget_tokens": budget}
        elif request.reasoning is False and self.ref.thinking:
            params["thinking"] = {"type": "disabled"}

        max_tokens = request.max_tokens
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS + (budget or 0)
        elif budget is not None and max_tokens <= budget:
            raise ConfigurationError(
                f"max_tokens={max_tokens} must exceed the thinking budget ({budget} tokens), "
                f"since thinking counts against it. Use max_tokens>{budget} or a smaller "
                "thinking_budget."
            )
        params["max_tokens"] = max_tokens

        # This SDK's create() no longer names temperature/top_p; the API (and llama-server's
        # Messages endpoint) still read them, so they travel in the JSON body.
        body: dict[str, Any] = {}
        # Adaptive thinking takes no sampling parameters: they are left out.
        if not (thinking and self.thinking_style == "adaptive"):
            if request.temperature is not None:
                body["temperature"] = request.temperature
            if request.top_p is not None:
                body["top_p"] = request.top_p
        if request.stop:
            params["stop_sequences"] = list(request.stop)

        tools = [convert_tool(t) for t in request.tools or []]
        rf_type = (request.response_format or {}).get("type")
        if rf_type == "json_object":
            tools = [t for t in tools if t["name"] != JSON_TOOL_NAME]
            tools.append({"name": JSON_TOOL_NAME,
                          "description": "Give the answer as a JSON object.",
                          "input_schema": {"type": "object", "additionalProperties": True}})
            params["tool_choice"] = {"type": "tool", "name": JSON_TOOL_NAME}
        elif request.tools:
            choice = convert_tool_choice(request.tool_choice, tools)
            if request.parallel_tool_calls is False and (choice or {}).get("type") != "none":
                choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
            if choice is not None:
                params["tool_choice"] = choice
        if tools:
            if self.cache_prompt:
                tools[-1] = {**tools[-1], "cache_control": {"type": "ephemeral"}}
            params["tools"] = tools
        if request.json_schema is not None:
            import anthropic

            params["output_config"] = {"format": {
                "type": "json_schema", "schema": anthropic.transform_schema(request.json_schema)}}

        # model_kwargs and per-call extras: API fields the SDK signature may not name.
        body.update({**(self.settings.get("model_kwargs") or {}), **request.extra})
        if body:
            params["extra_body"] = body
        if request.headers:
            params["extra_headers"] = dict(request.headers)
        return params

    def _is_json_mode(self, request: ChatRequest) -> bool:
        return (request.response_format or {}).get("type") == "json_object"

    # -- calls --------------------------------------------------------------------------------

    @maps_errors
    def chat(self, request: ChatRequest) -> ChatResponse:
        self.check(request)
        message = self.client.messages.create(**self.build_params(request))
        return self._response(message, self._is_json_mode(request))

    @maps_errors
    async def achat(self, request: ChatRequest) -> ChatResponse:
        self.check(request)
        message = await self.aclient.messages.create(**self.build_params(request))
        return self._response(message, self._is_json_mode(request))

    @maps_errors
    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        self.check(request)
        reader = _ChatEventReader(self.spec.key, self._is_json_mode(request), self.ref.model_id)
        events = self.client.messages.create(**self.build_params(request), stream=True)
        with events:
            for event in events:
                chunk = reader.feed(event)
                if chunk is not None:
                    yield chunk
        yield reader.finish()

    @maps_errors
    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        self.check(request)
        reader = _ChatEventReader(self.spec.key, self._is_json_mode(request), self.ref.model_id)
        events = await self.aclient.messages.create(**self.build_params(request), stream=True)
        async with events:
            async for event in events:
                chunk = reader.feed(event)
                if chunk is not None:
                    yield chunk
        yield reader.finish()

    def _response(self, message: Any, json_mode: bool) -> ChatResponse:
        texts, reasoning, calls, signed = [], [], [], []
        for block in message.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type in ("thinking", "redacted_thinking"):
                signed.append(signed_block(block))
                reasoning.append(signed[-1].get("thinking", ""))
            elif block.type == "tool_use":
                if json_mode and block.name == JSON_TOOL_NAME:
                    texts.append(json.dumps(block.input))
                else:
                    calls.append(ToolCall.parse(block.id, block.name, dict(block.input or {})))
        _check_refusal(self.spec.key, message.stop_reason)
        finish = STOP_REASONS.get(message.stop_reason or "", message.stop_reason)
        if json_mode and finish == "tool_calls" and not calls:
            finish = "stop"
        return ChatResponse(text="".join(texts), tool_calls=calls, reasoning="".join(reasoning),
                            thinking_blocks=signed, usage=usage_from(message.usage),
                            finish_reason=finish, model=message.model or self.ref.model_id,
                            id=getattr(message, "id", None) or "")


def signed_block(block: Any) -> dict[str, Any]:
    """A thinking or redacted_thinking block (SDK object) as the dict the API needs back."""
    # getattr: compatible servers (llama-server's Messages API) may leave the signature out.
    if block.type == "redacted_thinking":
        return {"type": "redacted_thinking", "data": getattr(block, "data", None) or ""}
    return {"type": "thinking", "thinking": getattr(block, "thinking", None) or "",
            "signature": getattr(block, "signature", None) or ""}


def _check_refusal(provider: str, stop_reason: str | None) -> None:
    """``stop_reason: "refusal"``: Anthropic's safety classifiers stopped the answer."""
    if stop_reason == "refusal":
        raise RefusalError(
            "Anthropic stopped the answer for a potential policy violation (stop_reason "
            "'refusal'). Rephrase the request; retrying it as is will be refused again.",
            provider=provider)


def usage_from(usage: Any) -> Usage | None:
    """Anthropic usage as :class:`Usage`, with ``input_tokens`` the total input."""
    if usage is None:
        return None
    values = usage if isinstance(usage, dict) else vars(usage)
    read = values.get("cache_read_input_tokens") or 0
    created = values.get("cache_creation_input_tokens") or 0
    plain = values.get("input_tokens") or 0
    return Usage(input_tokens=plain + read + created, output_tokens=values.get("output_tokens") or 0,
                 cache_read_tokens=read, cache_creation_tokens=created)


class _ChatEventReader:
    """Reads the raw SSE events of one streamed message as :class:`ChatChunk` objects."""

    def __init__(self, provider: str, json_mode: bool, model: str) -> None:
        self.provider = provider  # names the row in a refusal
        self.json_mode = json_mode
        self.model = model
        #: Anthropic content-block index -> our tool-call index (0, 1, ... in order).
        self.tool_index: dict[int, int] = {}
        #: Content-block index -> the signed thinking block being streamed there.
        self.thinking: dict[int, dict[str, Any]] = {}
        self.json_blocks: set[int] = set()
        self.usage: dict[str, int] = {}
        self.stop_reason: str | None = None
        self.id = ""

    def _take_usage(self, usage: Any) -> None:
        # message_start carries input counts; message_delta cumulative counts (some optional).
        for name in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                     "cache_creation_input_tokens"):
            value = getattr(usage, name, None)
            if value is not None:
                self.usage[name] = value

    def feed(self, event: Any) -> ChatChunk | None:
        kind = event.type
        if kind == "message_start":
            self.model = event.message.model or self.model
            self.id = getattr(event.message, "id", None) or self.id
            self._take_usage(event.message.usage)
        elif kind == "content_block_start":
            block = event.content_block
            if block.type == "tool_use":
                if self.json_mode and block.name == JSON_TOOL_NAME:
                    self.json_blocks.add(event.index)
                    return None
                index = self.tool_index[event.index] = len(self.tool_index)
                return ChatChunk(tool_calls=[ToolCallDelta(index, id=block.id, name=block.name)],
                                 model=self.model)
            if block.type == "text" and block.text:
                return ChatChunk(text=block.text, model=self.model)
            if block.type in ("thinking", "redacted_thinking"):
                self.thinking[event.index] = signed_block(block)
                if block.type == "thinking" and block.thinking:
                    return ChatChunk(reasoning=block.thinking, model=self.model)
        elif kind == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta":
                return ChatChunk(text=delta.text, model=self.model)
            if delta.type == "thinking_delta":
                self.thinking[event.index]["thinking"] += delta.thinking
                return ChatChunk(reasoning=delta.thinking, model=self.model)
            if delta.type == "signature_delta":
                self.thinking[event.index]["signature"] += delta.signature
            if delta.type == "input_json_delta":
                if event.index in self.json_blocks:
                    return ChatChunk(text=delta.partial_json, model=self.model)
                if event.index in self.tool_index and delta.partial_json:
                    index = self.tool_index[event.index]
                    return ChatChunk(tool_calls=[ToolCallDelta(index,
                                                               arguments=delta.partial_json)],
                                     model=self.model)
        elif kind == "content_block_stop" and event.index in self.thinking:
            # Whole, signature included: only now can it go back in a later request.
            return ChatChunk(thinking_blocks=[self.thinking.pop(event.index)], model=self.model)
        elif kind == "message_delta":
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            self._take_usage(event.usage)
        return None

    def finish(self) -> ChatChunk:
        _check_refusal(self.provider, self.stop_reason)
        finish = STOP_REASONS.get(self.stop_reason or "", self.stop_reason) or "stop"
        if self.json_mode and finish == "tool_calls" and not self.tool_index:
            finish = "stop"
        return ChatChunk(usage=usage_from(self.usage), finish_reason=finish, model=self.model,
                         id=self.id)


# -- message conversion (pure functions, unit-tested offline) ------------------------------------


def convert_messages(messages: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI-format messages as Anthropic's ``(system blocks, messages)``."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            # The API has one system prompt; every system message joins it, in order.
            text = _text_of(message.get("content"))
            if text:
                system.append({"type": "text", "text": text})
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"))
            turn = "user"
        elif role == "assistant":
            blocks = _assistant_blocks(message)
            turn = "assistant"
        elif role == "tool":
            blocks = [_tool_result(message)]
            turn = "user"
        else:
            raise ConfigurationError(
                f"Message role {role!r} has no Anthropic equivalent; use 'system', 'user', "
                "'assistant' or 'tool'."
            )
        if not blocks:  # the API rejects empty turns
            continue
        if out and out[-1]["role"] == turn:
            out[-1]["content"].extend(blocks)  # merge: turns must alternate
        else:
            out.append({"role": turn, "content": blocks})
    return system, out


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content
                   if isinstance(p, dict) and p.get("type") == "text")


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        if isinstance(part, str):
            part = {"type": "text", "text": part}
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append(image_block(url))
        elif kind in ("image", "document", "tool_result", "tool_use"):
            blocks.append(part)  # already in Anthropic's shape
        else:
            raise UnsupportedCapabilityError(
                f"Content part type {kind!r} is not supported by the Anthropic backend; use "
                "text or image_url parts."
            )
    return blocks


def image_block(url: str) -> dict[str, Any]:
    """An image part's URL as an Anthropic image block (base64 for data URLs, url otherwise)."""
    if not isinstance(url, str):
        raise ConfigurationError(f"An image_url part needs a URL string; got {url!r}.")
    match = _DATA_URL.match(url)
    if match:
        return {"type": "image", "source": {"type": "base64", "media_type": match["media"],
                                            "data": match["data"]}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise ConfigurationError(
        f"Image URL {url[:60]!r} is neither a base64 data URL ('data:image/png;base64,...') "
        "nor an http(s) URL. Pass the image in one of those forms."
    )


def _assistant_blocks(message: Message) -> list[dict[str, Any]]:
    # Signed thinking first: with thinking on, the API wants the turn that called tools to start
    # with the (unmodified) thinking that led to the calls.
    blocks: list[dict[str, Any]] = [dict(b) for b in message.get(THINKING_BLOCKS) or []]
    content = message.get("content")
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif content:
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
            elif isinstance(part, dict) and part.get("type") in ("thinking", "redacted_thinking"):
                blocks.append(part)  # signed thinking blocks must go back verbatim
    for call in message.get("tool_calls") or []:
        function = call.get("function", {})
        raw = function.get("arguments")
        if isinstance(raw, str):
            try:
                args = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as exc:
                raise ConfigurationError(
                    f"Tool call {call.get('id')!r} ({function.get('name')!r}) has arguments that "
                    f"are not valid JSON ({exc}); Anthropic needs them as an object."
                ) from exc
        else:
            args = raw or {}
        blocks.append({"type": "tool_use", "id": tool_use_id(call.get("id")),
                       "name": function.get("name"),
                       "input": args})
    return blocks


def _tool_result(message: Message) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        result: Any = _user_blocks(content)
    else:
        result = "" if content is None else str(content)
    block: dict[str, Any] = {"type": "tool_result",
                             "tool_use_id": tool_use_id(message.get("tool_call_id")),
                             "content": result}
    if message.get("is_error") or message.get("status") == "error":
        block["is_error"] = True
    return block


#: What the API accepts as a tool_use id; other providers' ids may hold more (vLLM's Kimi
#: parser writes 'functions.get_weather:0', some servers send none).
_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def tool_use_id(raw: Any) -> str:
    """A tool-call id as the API accepts it: kept when it is one (an Anthropic or OpenAI id),
    else rewritten the same way wherever it occurs (the call and the result that answers it
    still pair): disallowed characters as ``_`` plus a short hash of the original, so two ids
    that differ only there stay apart. A conversation from another provider is not refused."""
    text = "" if raw is None else str(raw)
    if _TOOL_USE_ID.match(text):
        return text
    import hashlib

    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^a-zA-Z0-9_-]', '_', text)}_{digest}".lstrip("_") or f"id_{digest}"


def convert_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as an Anthropic tool (Anthropic-shaped tools pass through)."""
    if "input_schema" in tool or (tool.get("type") not in (None, "function")):
        return dict(tool)
    function = tool.get("function", tool)
    out = {"name": function["name"],
           "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def convert_tool_choice(choice: str | None, tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    """ChatRequest's tool_choice as Anthropic's: auto, none, any (required), or one tool."""
    choice = normalise_tool_choice(choice, tools)
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    return {"type": "tool", "name": choice}

"""Planning an hf: request: the prompt rendered with the model's chat template (tools passed to
it, or described in the system prompt for templates without tools), tokenized once, with its
token budget, stop sequences, grammar (structured output, forced tool calls) and how to read the
output. A :class:`Plan` is what both generation paths run: the continuous-batching manager and
the locked batched ``generate``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from modelplug.backends import structured, tooling
from modelplug.backends.hf.loading import HFModel
from modelplug.errors import ConfigurationError, ContextOverflowError, UnsupportedCapabilityError
from modelplug.types import ChatRequest, CompletionRequest, Message

#: Per-call extras passed on to ``generate`` (GenerationConfig fields); the first three only
#: matter when sampling, so greedy calls leave them out (as they do top_p).
SAMPLING_ONLY_EXTRAS = frozenset({"top_k", "min_p", "typical_p"})
GENERATION_EXTRAS = SAMPLING_ONLY_EXTRAS | {"repetition_penalty", "no_repeat_ngram_size"}


@dataclass
class Plan:
    """One request, ready to generate: prompt ids, budget, and how to read the output."""

    request: ChatRequest | CompletionRequest
    ids: list[int]
    max_new: int
    stops: list[str]
    #: "text", "json" (response_format), "tools" (constrained JSON) or "native" (model format).
    mode: str = "text"
    grammar: Any = None
    #: A thinking model's reasoning before its constrained answer (see structured.Reasoning).
    reasoning: Any = None
    tool_format: str | None = None
    think: bool = False
    implicit_open: bool = False
    #: Extra model inputs (vision: pixel values); such a plan is generated on its own.
    extra_inputs: dict[str, Any] | None = None
    #: generate() options from the request's per-call extras (top_k, repetition_penalty, ...).
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def skip_special(self) -> bool:
        # Mistral's [TOOL_CALLS] is a control token, and think tags may be: keep them to see.
        return self.tool_format != "BRACKETED" and not (
            self.reasoning is not None and self.reasoning.special)

    def sampling_key(self) -> tuple:
        r = self.request
        options = tuple(sorted((k, repr(v)) for k, v in self.options.items()))
        return (r.temperature, r.top_p, r.seed, options, self.extra_inputs is not None)


def plan_chat(lm: HFModel, request: ChatRequest, *, template: str, tool_format: str | None,
              thinking: bool, ref: Any, provider: str, thinking_budget: int = 0,
              chat_template: str | None = None) -> Plan:
    """A chat request, ready to generate. ``template``: the chat template(s) as text;
    ``tool_format``: the model's own tool-call format (None: none known); ``thinking_budget``:
    tokens a thinking model may reason for before a constrained answer; ``chat_template``: a
    template given in place of the model's own."""
    template_tools = tooling.template_knows_tools(template)
    fmt = tool_format
    mode, schema = "text", structured.answer_schema(request)
    if tooling.constrained(request) and fmt and template_tools \
            and request.tool_choice in (None, "auto"):
        mode, schema = "native", None  # the model decides, in its own format
    elif schema is not None:
        mode = "tools" if tooling.constrained(request) else "json"
        structured.compile_schema(schema)  # refused before the prompt is rendered
    with_tools = mode in ("native", "tools")
    tools = request.tools if with_tools and template_tools else None
    described = tooling.tools_prompt(request) if with_tools and not template_tools else None
    messages = structured.instructed(
        request, tooling.template_messages(request.messages, template, described))
    prompt, extra = render(lm, messages, tools, request, ref, chat_template)
    ids = lm.encode(prompt) if extra is None else extra.pop("input_ids")[0].tolist()
    reasoning = None
    if schema is not None:
        reasoning = structured.reasoning_start(
            request, prompt, template=template, thinking=thinking,
            budget=thinking_budget or structured.DEFAULT_THINKING_BUDGET)
        if reasoning is not None:
            reasoning = structured.within(reasoning, schema, request.max_tokens,
                                          special=structured.special_tags(lm.lltokenizer()))
    plan = budget(lm, request, ids, ref=ref, provider=provider, schema=schema,
                  reasoning=reasoning)
    plan.mode, plan.extra_inputs, plan.reasoning = mode, extra, reasoning
    if schema is not None:
        plan.grammar = structured.compile_grammar(schema, reasoning)
    plan.tool_format = fmt if mode == "native" else None
    if mode in ("text", "native"):
        plan.think = structured.OPEN_TAG in template or thinking
    else:
        plan.think = reasoning is not None
    plan.implicit_open = prompt.rstrip().endswith(structured.OPEN_TAG)
    return plan


def budget(lm: HFModel, request: ChatRequest | CompletionRequest, ids: list[int], *,
           ref: Any, provider: str, schema: dict[str, Any] | None = None,
           reasoning: Any = None) -> Plan:
    """The plan for prompt ``ids``: its token budget (the model's default when the request sets
    none; for a structured answer whose schema bounds its length, that bound plus the
    reasoning's, so it always finishes) within the context window."""
    if len(ids) >= lm.context:
        raise ContextOverflowError(
            f"The prompt has {len(ids)} tokens but the context window of '{ref}' is "
            f"{lm.context}. Shorten the conversation.", provider=provider)
    room = lm.context - len(ids)
    default = structured.default_budget(schema, reasoning, lm.default_max_tokens)
    max_new = min(request.max_tokens or default, room)
    return Plan(request=request, ids=ids, max_new=max(1, max_new),
                stops=[s for s in request.stop or [] if s],
                options=tooling.sampling_extras(request, GENERATION_EXTRAS, ref))


def render(lm: HFModel, messages: list[Message], tools: list[dict[str, Any]] | None,
           request: ChatRequest, ref: Any,
           template: str | None = None) -> tuple[str, dict[str, Any] | None]:
    """The prompt text, and the processor's inputs when the request carries images.
    ``template``: a chat template that replaces the model's own (the chat_template setting)."""
    owner = lm.processor if lm.processor is not None else lm.tokenizer
    if not getattr(owner, "chat_template", None):
        raise ConfigurationError(
            f"'{ref}' has no chat template. Use a chat/instruct model, or raw text "
            "completion (the prompt as written, no template) for a base model."
        )
    kwargs: dict[str, Any] = {} if template is None else {"chat_template": template}
    if request.reasoning is not None:  # the Qwen3-style switch; other templates ignore it
        kwargs["enable_thinking"] = request.reasoning
    images = request.has_images and lm.processor is not None
    if request.has_images and not images:
        raise UnsupportedCapabilityError(
            f"'{ref}' has no image processor, but the request has images. Use a "
            "vision model folder (with preprocessor_config.json)."
        )
    # A final assistant message with text is a prefill: the answer continues it.
    messages, prefill = tooling.split_prefill(messages)
    converted = [_hf_message(m, images) for m in messages]
    prompt = owner.apply_chat_template(converted, tools=tools, add_generation_prompt=True,
                                       tokenize=False, **kwargs) + prefill
    if not images:
        return prompt, None
    pictures = _load_images(messages)
    with lm.text_lock:
        inputs = lm.processor(text=[prompt], images=pictures, return_tensors="pt")
    return prompt, dict(inputs)


def _hf_message(message: Message, images: bool) -> Message:
    """An OpenAI-format message as chat templates expect it (arguments as objects)."""
    out = dict(message)
    content = message.get("content")
    if isinstance(content, list):
        if images:
            out["content"] = [{"type": "image"} if p.get("type") == "image_url"
                              else {"type": "text", "text": p.get("text", "")}
                              for p in content if isinstance(p, dict)]
        else:
            out["content"] = tooling.text_content(content)
    elif content is None:
        out["content"] = ""
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {**c, "function": {**c["function"],
                               "arguments": _arguments(c["function"].get("arguments"))}}
            for c in message["tool_calls"]
        ]
    return out


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return raw
    return raw or {}


def _load_images(messages: list[Message]) -> list[Any]:
    """PIL images of the request's image parts: data URLs and local paths (never the network)."""
    import base64
    import io

    from PIL import Image

    images = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            url = part["image_url"]["url"] if isinstance(part["image_url"], dict) \
                else part["image_url"]
            if url.startswith("data:"):
                data = base64.b64decode(url.partition(",")[2])
                images.append(Image.open(io.BytesIO(data)).convert("RGB"))
            elif url.startswith(("http://", "https://")):
                raise UnsupportedCapabilityError(
                    "hf models do not fetch image URLs (no network in-process). Pass the image "
                    "as a data URL (data:image/png;base64,...) or a local file path."
                )
            else:
                images.append(Image.open(url.removeprefix("file://")).convert("RGB"))
    return images



__all__ = ["GENERATION_EXTRAS", "SAMPLING_ONLY_EXTRAS", "Plan", "budget", "plan_chat", "render"]

"""An instrumentation event handler that totals tokens and cost per model across a query, an
agent run or any LlamaIndex code."""

from __future__ import annotations

from collections import deque
from typing import Any

from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent
from llama_index.llms.modelplug.fallback import FallbackAttemptEvent
from pydantic import ConfigDict, Field, PrivateAttr

from modelplug.accounting import UsageTotals
from modelplug.types import Usage

__all__ = ["UsageCostEventHandler"]


class UsageCostEventHandler(BaseEventHandler):
    """Totals tokens and cost per ``provider:model`` over every ModelPlug answer it sees.

    Add it to the root dispatcher (``get_dispatcher().add_event_handler(handler)``), run the
    query or agent, then read ``handler.totals.by_model`` (a
    :class:`modelplug.accounting.ModelTotals` per model), ``handler.totals.total_cost`` and
    ``handler.totals.total_tokens``. Costs come from the answers' ``raw['cost']``. A FallbackLLM
    answer is counted once, on the candidate that answered; each failed or skipped attempt
    before it (its ``FallbackAttemptEvent``) counts as a failed attempt of that candidate.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    totals: UsageTotals = Field(default_factory=UsageTotals)
    _seen: deque[Any] = PrivateAttr(default_factory=lambda: deque(maxlen=64))

    @classmethod
    def class_name(cls) -> str:
        return "UsageCostEventHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, FallbackAttemptEvent):
            if event.error is not None:
                self.totals.add_failure(event.candidate)
        elif isinstance(event, (LLMChatEndEvent, LLMCompletionEndEvent)):
            response = event.response
            # A FallbackLLM passes on its candidate's answer object, whose own end event came
            # first: count each answer once (references, so ids are not reused meanwhile).
            if response is None or any(seen is response for seen in self._seen):
                return
            self._seen.append(response)
            raw = response.raw if isinstance(response.raw, dict) else {}
            usage = raw.get("usage")
            if not usage or "cost" not in raw:  # not a ModelPlug answer, or no usage yet
                return
            self.totals.add(f"{raw['provider']}:{raw['model']}", Usage(
                input_tokens=usage.get("prompt_tokens", 0),
                output_tokens=usage.get("completion_tokens", 0),
                cache_read_tokens=usage.get("cached_tokens", 0),
                cache_creation_tokens=usage.get("cache_creation_tokens", 0),
                reasoning_tokens=usage.get("reasoning_tokens", 0),
                audio_input_tokens=usage.get("input_audio_tokens", 0),
                audio_output_tokens=usage.get("output_audio_tokens", 0)), raw["cost"])

"""A callback handler that totals tokens and cost per model across a chain or an agent run."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult

from modelplug.accounting import UsageTotals, cost_of
from modelplug.types import Usage

__all__ = ["UsageCostHandler"]


def _usage(meta: dict[str, Any]) -> Usage:
    """langchain-core ``usage_metadata`` as a modelplug Usage (details as langchain documents)."""
    inp = meta.get("input_token_details") or {}
    out = meta.get("output_token_details") or {}
    return Usage(input_tokens=meta.get("input_tokens", 0), output_tokens=meta.get("output_tokens", 0),
                 cache_read_tokens=inp.get("cache_read", 0) or 0,
                 cache_creation_tokens=inp.get("cache_creation", 0) or 0,
                 reasoning_tokens=out.get("reasoning", 0) or 0,
                 audio_input_tokens=inp.get("audio", 0) or 0,
                 audio_output_tokens=out.get("audio", 0) or 0)


class UsageCostHandler(BaseCallbackHandler):
    """Totals tokens and cost per ``provider:model`` over every chat-model call it sees.

    Pass it in ``config={"callbacks": [handler]}`` of a chain or agent run; read
    ``handler.totals.by_model`` (a :class:`modelplug.accounting.ModelTotals` per model),
    ``handler.totals.total_cost`` and ``handler.totals.total_tokens``. The cost is the one in
    ``response_metadata['cost']`` (ChatModelPlug); for another chat model it is priced from its
    ``usage_metadata`` and ``model_provider``/``model_name``. A fallback set's answer is counted
    on the candidate that answered, and each failed or skipped attempt before it (its
    ``fallback_attempts``) as a failed attempt of that candidate; a call that raises is a
    failed attempt of the model it was started with.
    """

    raise_error = False

    def __init__(self) -> None:
        super().__init__()
        self.totals = UsageTotals()
        #: Model runs in flight: run id -> the model they were started with.
        self._runs: dict[UUID, str] = {}

    def on_chat_model_start(self, serialized: dict[str, Any], messages: Any, *, run_id: UUID,
                            parent_run_id: UUID | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        meta = metadata or {}
        self._runs[run_id] = f"{meta.get('ls_provider', '?')}:{meta.get('ls_model_name', '?')}"

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID,
                     parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None,
                     **kwargs: Any) -> None:
        self.on_chat_model_start(serialized, prompts, run_id=run_id, metadata=metadata)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None,
                   **kwargs: Any) -> None:
        self._runs.pop(run_id, None)
        if parent_run_id in self._runs:  # a fallback candidate run inside a model run: the
            return                       # parent's answer carries the same usage
        for generations in response.generations:
            for generation in generations:
                if isinstance(generation, ChatGeneration):
                    self._count(generation.message.response_metadata,
                                generation.message.usage_metadata)

    def on_llm_error(self, error: BaseException, *, run_id: UUID,
                     parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        model = self._runs.pop(run_id, None)
        if model is not None and parent_run_id not in self._runs:
            self.totals.add_failure(model)

    def _count(self, meta: dict[str, Any], usage_meta: Any) -> None:
        for attempt in meta.get("fallback_attempts") or []:
            if attempt.get("error") is not None:
                self.totals.add_failure(attempt["candidate"])
        if not usage_meta:
            return
        provider, model = meta.get("model_provider", "?"), meta.get("model_name", "?")
        usage = _usage(dict(usage_meta))
        cost = meta.get("cost")
        if cost is None:
            cost = cost_of(usage, provider, model).as_dict()
        name = meta.get("fallback_model") or f"{provider}:{model}"
        self.totals.add(name, usage, cost)

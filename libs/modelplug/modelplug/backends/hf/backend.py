"""The ``hf:`` backend object: what each call does, over the package's parts."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

from modelplug.backends import tooling
from modelplug.backends.base import Backend
from modelplug.backends.hf import generation
from modelplug.backends.hf.loading import HFLoading, HFModel
from modelplug.backends.hf.planning import GENERATION_EXTRAS, Plan, budget, plan_chat
from modelplug.profile import Profile
from modelplug.types import ChatChunk, ChatRequest, ChatResponse, CompletionRequest


class HFBackend(HFLoading, Backend):
    """transformers models in-process. See :mod:`modelplug.backends.hf`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._validate_settings()
        self._source = self._locate()  # fail fast: missing folder, not cached, pickle weights
        self._profile: Profile | None = None

    # -- profile ---------------------------------------------------------------------------------

    def profile(self) -> Profile:
        if self._profile is None:
            config = self._read_json("config.json")
            text_config = config.get("text_config") or {}
            context = config.get("max_position_embeddings") or \
                text_config.get("max_position_embeddings")
            template = self.chat_template()
            grammar = importlib.util.find_spec("xgrammar") is not None
            native = "tools" in template and self.tool_call_format() is not None
            tools = grammar or native
            self._profile = Profile.from_ref(self.ref).merged(
                max_input_tokens=context,
                tool_calling=tools,
                # forcing a call (tool_choice any / a name) needs the grammar path
                tool_choice=grammar,
                tool_call_streaming=tools,
                structured_output=grammar,
                reasoning_output=True if "<think>" in template else None,
                image_inputs=True if self._has_processor else None,
            )
        return self._profile

    # -- calls -----------------------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> ChatResponse:
        return self.batch([request])[0]

    def batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        """All requests in one left-padded ``generate`` (one per distinct sampling setting)."""
        for request in requests:
            self.check(request)
            tooling.sampling_extras(request, GENERATION_EXTRAS, self.ref)
        if not requests:
            return []
        loaded = self._loaded()
        with loaded.lock:
            lm = loaded.model
            plans = [self._plan(lm, r) for r in requests]
            return generation.answer(lm, plans, self.ref.model_id)

    async def abatch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        import asyncio

        return await asyncio.to_thread(self.batch, requests)

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        self.check(request)
        tooling.sampling_extras(request, GENERATION_EXTRAS, self.ref)  # before loading
        loaded = self._loaded()
        with loaded.lock:
            lm = loaded.model
            plan = self._plan(lm, request)
            if plan.mode in ("text", "json") and plan.extra_inputs is None:
                yield from generation.stream_plan(lm, plan, self.ref.model_id)
            else:  # tool turns are parsed whole: one chunk
                yield generation.as_chunk(generation.answer(lm, [plan], self.ref.model_id)[0])

    def stream_complete(self, request: CompletionRequest) -> Iterator[ChatChunk]:
        tooling.sampling_extras(request, GENERATION_EXTRAS, self.ref)  # before loading
        loaded = self._loaded()
        with loaded.lock:
            lm = loaded.model
            ids = lm.tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
            yield from generation.stream_plan(lm, self._budget(lm, request, ids),
                                              self.ref.model_id)

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Mean-pooled last hidden states, L2-normalised, one vector per text."""
        import torch

        loaded = self._loaded()
        out: list[list[float]] = []
        with loaded.lock, torch.inference_mode():
            lm = loaded.model
            for start in range(0, len(texts), 16):
                enc = lm.tokenizer(texts[start:start + 16], padding=True, truncation=True,
                                   max_length=lm.context, return_tensors="pt").to(lm.device)
                hidden = lm.model.base_model(input_ids=enc["input_ids"],
                                             attention_mask=enc["attention_mask"])[0]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.extend(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().tolist())
        return out

    # -- planning ------------------------------------------------------------------------------

    def _plan(self, lm: HFModel, request: ChatRequest) -> Plan:
        return plan_chat(lm, request, template=self.chat_template(),
                         tool_format=self.tool_call_format(), thinking=bool(self.ref.thinking),
                         ref=self.ref, provider=self.spec.key)

    def _budget(self, lm: HFModel, request: ChatRequest | CompletionRequest,
                ids: list[int]) -> Plan:
        return budget(lm, request, ids, ref=self.ref, provider=self.spec.key)


__all__ = ["HFBackend"]

"""The ``hf:`` backend object: what each call does, over the package's parts."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from modelplug import weights
from modelplug.backends import structured, tooling
from modelplug.backends.base import Backend, iterate_in_thread
from modelplug.backends.hf import generation
from modelplug.backends.hf.batching import (
    DEFAULT_MAX_BATCH,
    CBEngine,
    CBScheduler,
    acollect,
    collect,
    make_job,
)
from modelplug.backends.hf.loading import HFLoading, HFModel
from modelplug.backends.hf.planning import GENERATION_EXTRAS, Plan, budget, plan_chat
from modelplug.errors import ConfigurationError
from modelplug.profile import Profile
from modelplug.scheduling import DEFAULT_MAX_QUEUE, Ticket
from modelplug.types import ChatChunk, ChatRequest, ChatResponse, CompletionRequest
from modelplug.weights import LoadedModel

logger = logging.getLogger("modelplug")

#: What a plan yields when it is answered whole (chat, tool turns) rather than streamed.
_STREAMED_MODES = ("text", "json")


class HFBackend(HFLoading, Backend):
    """transformers models in-process (see :mod:`modelplug.backends.hf`).

    Concurrent calls on one loaded model (threads, ``asyncio`` tasks, ``batch``) are decoded
    together by transformers' continuous batching (:mod:`modelplug.backends.hf.batching`):
    each request joins the running batch at the next step, with its own sampling settings,
    seed, penalties, stop sequences, budget and grammar, and streams back to its own caller.
    Requests it cannot take (image inputs, a request longer than the paged cache) take turns on
    the model's lock with one batched ``generate``, while the batch waits paused.

    Settings (keyword arguments of ``ChatModelPlug`` / ``ModelPlug`` / ``create_backend``):

    - ``device``, ``torch_dtype``, ``model_kwargs``, ``allow_download``, ``trust_remote_code``,
      ``tool_call_format``: loading (see :mod:`modelplug.backends.hf.loading`).
    - ``max_batch`` (int, default 32): requests decoded together (the manager's
      ``max_requests_per_batch``); more wait in the queue.
    - ``kv_cache_tokens`` (int): tokens of the paged KV cache all running requests share
      (in blocks of 64 tokens on CPU/MPS, transformers' 256 elsewhere; complete blocks of a
      shared prefix, such as a chat's earlier turns, are computed once). Default: the model's
      context length on CPU/MPS; on a GPU, transformers sizes it from the free memory. A request
      longer than the cache takes the locked path.
    - ``max_queue`` (int, default :data:`modelplug.scheduling.DEFAULT_MAX_QUEUE`): requests that
      may wait for a place in the batch; one more is refused with
      :class:`~modelplug.errors.ServerBusyError`.
    - ``queue_timeout`` (seconds, default 0): how long a request may wait for room in a full
      queue before it is refused (0: at once).
    - ``continuous_batching`` (bool, default True): False sends every call down the locked path
      (one ``generate`` per call or batch, as before continuous batching).

    The first settings that load a model fix its batch (``max_batch``, ``kv_cache_tokens``,
    queue): other backend objects naming the same model share it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._validate_settings()
        self._validate_batching()
        self._source = self._locate()  # fail fast: missing folder, not cached, pickle weights
        self._profile: Profile | None = None

    def _validate_batching(self) -> None:
        s = self.settings
        for name, floor in (("max_batch", 1), ("kv_cache_tokens", 1), ("max_queue", 0)):
            value = s.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < floor):
                raise ConfigurationError(f"{name} must be an int >= {floor}; got {value!r}.")
        timeout = s.get("queue_timeout")
        if timeout is not None and (not isinstance(timeout, (int, float))
                                    or isinstance(timeout, bool) or timeout < 0):
            raise ConfigurationError(
                f"queue_timeout must be a number of seconds >= 0 (0: refuse at once when the "
                f"queue is full); got {timeout!r}.")

    # -- profile ---------------------------------------------------------------------------------

    def profile(self) -> Profile:
        if self._profile is None:
            config = self._read_json("config.json")
            text_config = config.get("text_config") or {}
            context = config.get("max_position_embeddings") or \
                text_config.get("max_position_embeddings")
            template = self.chat_template()
            grammar = importlib.util.find_spec("llguidance") is not None
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

    # -- the batch -------------------------------------------------------------------------------

    def _scheduler(self, loaded: LoadedModel) -> CBScheduler | None:
        """The loaded model's continuous-batching scheduler (built on first use), or None where
        continuous batching is unavailable for this model."""
        if "scheduler" in loaded.companions:
            return loaded.companions["scheduler"]
        # Starting the manager switches the model to an attention it can batch: never while a
        # locked call drives the model.
        with loaded.lock:
            return loaded.companion("scheduler", lambda: self._build_scheduler(loaded.model))

    def _build_scheduler(self, lm: HFModel) -> CBScheduler | None:
        if lm.processor is not None:  # vision models: their inputs are more than token ids
            return None
        if not hasattr(lm.model, "init_continuous_batching"):
            logger.warning("%s: this transformers has no continuous batching; concurrent calls "
                           "take turns on the model's lock.", self.ref)
            return None
        s = self.settings
        name = f"'{self.ref}'"
        try:
            engine = CBEngine(lm, capacity=s.get("max_batch") or DEFAULT_MAX_BATCH,
                              kv_cache_tokens=s.get("kv_cache_tokens"), name=name)
        except Exception as exc:
            # The manager's API moves between transformers releases (5.17 lacks
            # ContinuousBatchingConfig.page_size); 5.25 is the one tested, on CPU and CUDA.
            import transformers

            logger.warning("%s: continuous batching could not start with transformers %s (%s: "
                           "%s); concurrent calls take turns on the model's lock. transformers "
                           "5.25 or newer is tested.", self.ref, transformers.__version__,
                           type(exc).__name__, exc)
            return None
        return CBScheduler(engine, name=name,
                           max_queue=s.get("max_queue", DEFAULT_MAX_QUEUE),
                           queue_timeout=s.get("queue_timeout") or 0.0)

    def serving_stats(self) -> dict[str, Any] | None:
        key = self._load_key()
        if key not in weights.loaded_keys():
            return None
        scheduler = weights.get_or_load(key, self._load).companions.get("scheduler")
        return scheduler.stats() if scheduler is not None else None

    def _submit(self, loaded: LoadedModel, plan: Plan, *, whole: bool,
                loop: asyncio.AbstractEventLoop | None = None) -> Ticket | None:
        """Queue ``plan`` in the batch; None when it takes the locked path."""
        if self.settings.get("continuous_batching") is False:
            return None
        scheduler = self._scheduler(loaded)
        if scheduler is None:
            return None
        why = scheduler.engine.takes(plan)
        if why is not None:
            logger.debug("%s: a request takes the locked path: %s", self.ref, why)
            return None
        job = make_job(loaded.model, plan, whole=whole, model=self.ref.model_id)
        return scheduler.submit(job, loop)

    @contextlib.contextmanager
    def _direct(self, loaded: LoadedModel) -> Iterator[HFModel]:
        """The locked path: the model's lock, and the batch paused while this call drives it."""
        with loaded.lock:
            scheduler = loaded.companions.get("scheduler")
            with scheduler.engine.exclusive() if scheduler is not None else \
                    contextlib.nullcontext():
                yield loaded.model

    def _open(self, request: ChatRequest, *, stream: bool,
              loop: asyncio.AbstractEventLoop | None = None,
              ) -> tuple[Ticket | None, Plan, LoadedModel]:
        """Check, load, plan and queue one chat request (in the caller's thread, so a request
        that cannot work fails alone before it is queued)."""
        self.check(request)
        tooling.sampling_extras(request, GENERATION_EXTRAS, self.ref)  # before loading
        loaded = self._loaded()
        plan = self._plan(loaded.model, request)
        return self._submit(loaded, plan, whole=_whole(plan, stream), loop=loop), plan, loaded

    def _open_batch(self, requests: list[ChatRequest],
                    loop: asyncio.AbstractEventLoop | None = None,
                    ) -> tuple[list[Ticket | None], list[Plan], LoadedModel]:
        for request in requests:
            self.check(request)
            tooling.sampling_extras(request, GENERATION_EXTRAS, self.ref)
        loaded = self._loaded()
        plans = [self._plan(loaded.model, r) for r in requests]
        tickets: list[Ticket | None] = []
        try:
            for plan in plans:
                tickets.append(self._submit(loaded, plan, whole=True, loop=loop))
        except BaseException:
            for ticket in tickets:
                if ticket is not None:
                    ticket.cancel()
            raise
        return tickets, plans, loaded

    def _answer_direct(self, loaded: LoadedModel, plans: list[Plan]) -> list[ChatResponse]:
        with self._direct(loaded) as lm:
            return generation.answer(lm, plans, self.ref.model_id)

    def _stream_direct(self, loaded: LoadedModel, plan: Plan) -> Iterator[ChatChunk]:
        with self._direct(loaded) as lm:
            if plan.mode in _STREAMED_MODES and plan.extra_inputs is None:
                yield from generation.stream_plan(lm, plan, self.ref.model_id)
            else:  # tool turns are parsed whole: one chunk
                yield generation.as_chunk(generation.answer(lm, [plan], self.ref.model_id)[0])

    # -- calls -----------------------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> ChatResponse:
        ticket, plan, loaded = self._open(request, stream=False)
        if ticket is not None:
            return collect(ticket)
        return self._answer_direct(loaded, [plan])[0]

    def batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        """Every request decoded together with every other caller's (the batch); those it
        cannot take in one left-padded ``generate`` (one per distinct sampling setting)."""
        if not requests:
            return []
        tickets, plans, loaded = self._open_batch(requests)
        try:
            batched = [collect(t) if t is not None else None for t in tickets]
        finally:
            for ticket in tickets:
                if ticket is not None:
                    ticket.cancel()  # a no-op for those that ended
        return self._gather(tickets, plans, loaded, batched)

    def _gather(self, tickets: list[Ticket | None], plans: list[Plan], loaded: LoadedModel,
                batched: list[ChatResponse | None]) -> list[ChatResponse]:
        direct = [i for i, t in enumerate(tickets) if t is None]
        responses = list(batched)
        if direct:
            for i, response in zip(direct, self._answer_direct(loaded, [plans[i] for i in direct]),
                                   strict=True):
                responses[i] = response
        return responses  # type: ignore[return-value]

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        ticket, plan, loaded = self._open(request, stream=True)
        if ticket is None:
            yield from self._stream_direct(loaded, plan)
        elif _whole(plan, stream=True):  # tool turns are parsed whole: one chunk
            yield generation.as_chunk(collect(ticket))
        else:
            yield from ticket

    def stream_complete(self, request: CompletionRequest) -> Iterator[ChatChunk]:
        ticket, plan, loaded = self._open_completion(request)
        if ticket is None:
            yield from self._stream_direct(loaded, plan)
        else:
            yield from ticket

    def _open_completion(self, request: CompletionRequest,
                         loop: asyncio.AbstractEventLoop | None = None,
                         ) -> tuple[Ticket | None, Plan, LoadedModel]:
        tooling.sampling_extras(request, GENERATION_EXTRAS, self.ref)  # before loading
        loaded = self._loaded()
        lm = loaded.model
        plan = self._budget(lm, request, lm.encode(request.prompt, add_special_tokens=True))
        return self._submit(loaded, plan, whole=False, loop=loop), plan, loaded

    # -- async: the event loop waits on the ticket, no thread per request ------------------------

    async def achat(self, request: ChatRequest) -> ChatResponse:
        ticket, plan, loaded = await _aopen(
            lambda loop: self._open(request, stream=False, loop=loop))
        if ticket is not None:
            return await acollect(ticket)
        return (await asyncio.to_thread(self._answer_direct, loaded, [plan]))[0]

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        ticket, plan, loaded = await _aopen(
            lambda loop: self._open(request, stream=True, loop=loop))
        async for chunk in self._adeliver(ticket, plan, loaded):
            yield chunk

    async def _adeliver(self, ticket: Ticket | None, plan: Plan,
                        loaded: LoadedModel) -> AsyncIterator[ChatChunk]:
        if ticket is None:
            async for chunk in iterate_in_thread(lambda: self._stream_direct(loaded, plan)):
                yield chunk
        elif _whole(plan, stream=True):
            yield generation.as_chunk(await acollect(ticket))
        else:
            async for chunk in ticket:
                yield chunk

    async def abatch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        if not requests:
            return []
        tickets, plans, loaded = await _aopen(lambda loop: self._open_batch(requests, loop))
        try:
            batched = [await acollect(t) if t is not None else None for t in tickets]
        finally:
            for ticket in tickets:
                if ticket is not None:
                    ticket.cancel()  # a no-op for those that ended
        if all(t is not None for t in tickets):
            return batched  # type: ignore[return-value]
        return await asyncio.to_thread(self._gather, tickets, plans, loaded, batched)

    async def astream_complete(self, request: CompletionRequest) -> AsyncIterator[ChatChunk]:
        ticket, plan, loaded = await _aopen(
            lambda loop: self._open_completion(request, loop))
        async for chunk in self._adeliver(ticket, plan, loaded):
            yield chunk

    async def acomplete(self, request: CompletionRequest) -> ChatResponse:
        from modelplug.backends.base import collect_stream

        chunks = [chunk async for chunk in self.astream_complete(request)]
        return collect_stream(iter(chunks))

    # -- embeddings ------------------------------------------------------------------------------

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Mean-pooled last hidden states, L2-normalised, one vector per text."""
        import torch

        loaded = self._loaded()
        out: list[list[float]] = []
        with self._direct(loaded) as lm, torch.inference_mode():
            for start in range(0, len(texts), 16):
                with lm.text_lock:
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
                         ref=self.ref, provider=self.spec.key,
                         thinking_budget=structured.thinking_budget(self.settings),
                         chat_template=self.settings.get("chat_template"))

    def _budget(self, lm: HFModel, request: ChatRequest | CompletionRequest,
                ids: list[int]) -> Plan:
        return budget(lm, request, ids, ref=self.ref, provider=self.spec.key)


def _whole(plan: Plan, stream: bool) -> bool:
    """Whether the batch hands the answer over whole: chat calls, and tool turns (parsed whole)."""
    return not stream or plan.mode not in _STREAMED_MODES


async def _aopen(open_: Callable[[asyncio.AbstractEventLoop], Any]) -> Any:
    """Run ``open_`` (load, plan, queue: it may take a while) off the event loop, with the loop
    the tickets deliver on. A caller cancelled meanwhile cancels what was queued for it."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(asyncio.to_thread(open_, loop))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_cancel_opened)
        raise


def _cancel_opened(task: asyncio.Future[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    first = task.result()[0]
    for ticket in first if isinstance(first, list) else [first]:
        if ticket is not None:
            ticket.cancel()


__all__ = ["HFBackend"]

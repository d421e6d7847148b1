"""Continuous batching for ``hf:`` models: transformers' own manager, and what it lacks.

Concurrent requests on one loaded model are decoded together by transformers' continuous
batching (``model.init_continuous_batching()``: a :class:`ContinuousBatchingManager` with a paged
KV cache, its own generation thread, new requests joining the running batch at the next step,
finished ones leaving it, prefix blocks shared between requests). What it covers is used as it
is: ``add_request`` (prompt ids, ``max_new_tokens``, end tokens, streaming), ``cancel_request``,
per-request ``temperature`` / ``top_k`` / ``top_p`` (its per-request processors), the paged
cache sized by ``kv_cache_tokens``, ``pause()`` for the few calls that must drive the model
directly.

What it does not cover is closed here, around it, without re-doing its work:

- greedy and sampled requests in one batch: the manager samples every row or none, so it samples
  and a greedy request asks for ``top_k=1`` (its own top-k processor leaves one candidate);
- constrained decoding (structured output, forced tool calls): :class:`GrammarRows`, a
  per-request processor of the manager's own kind (``ContinuousBatchingLogitsProcessor``) placed
  first in its list, applies each constrained request's xgrammar bitmask to that request's row;
- a seed per request: :class:`SeededRows`, placed last, draws a seeded request's token from its
  own ``torch.Generator`` (so its answer does not depend on its batch-mates);
- stop sequences, incremental decoding, think tags, tool-call parsing and each caller's own
  stream: one router (the :class:`~modelplug.scheduling.Scheduler` worker driving
  :class:`CBEngine`) reads the manager's outputs, feeds each request's tokens to its
  :class:`~modelplug.backends.hf.generation.TextReader`, cancels a request in the manager the
  moment its stop sequence appears, and puts chunks (or the whole response) on its
  :class:`~modelplug.scheduling.Ticket`;
- back-pressure, cancellation of queued requests, stats and shutdown: the scheduler admits at
  most ``max_batch`` requests into the manager; more wait in its bounded queue.

Both processors run on the host between steps, so the manager runs without CUDA graphs and
async double-buffering (a graph replay would skip them).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from modelplug.backends.hf import generation
from modelplug.backends.hf.generation import TextReader
from modelplug.backends.hf.loading import HFModel
from modelplug.backends.hf.planning import Plan
from modelplug.errors import ConfigurationError, ProviderUnavailableError
from modelplug.scheduling import Scheduler, Ticket

#: Requests decoded together unless ``max_batch=`` says otherwise.
DEFAULT_MAX_BATCH = 32
#: Prompt tokens evaluated in one step on CPU/MPS (longer prompts take several steps); the
#: manager's own default (8192) sizes an attention mask of hundreds of MB there.
CPU_MAX_BATCH_TOKENS = 1024
#: transformers' defaults for what a model's generation_config leaves unset.
_GENERATE_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0}
#: How long the router waits for the manager's next output before it looks at its queue again.
_POLL_S = 0.02


@dataclass
class CBJob:
    """One request as the manager runs it, built in the caller's thread."""

    plan: Plan
    #: Whole response at the end (chat, tool turns) or chunks as they come (streams).
    whole: bool
    model: str
    #: Per-request processor arguments the manager knows (temperature, top_k, top_p).
    sampling: dict[str, Any]
    #: The request's own generator (seeded sampling), else None.
    generator: Any = None
    #: The request's xgrammar matcher (structured output, forced tool calls), else None.
    matcher: Any = None
    reader: TextReader | None = None
    rid: str = ""
    ticket: Ticket | None = None
    #: Tokens of the manager's output already read, and already fed to the matcher.
    seen: int = 0
    accepted: int = 0
    #: The manager holds the request no more (ended, failed or cancelled there).
    closed: bool = False


def samples(lm: HFModel, plan: Plan) -> bool:
    """Whether ``generate`` would sample this request (else greedy): temperature 0 never does,
    no temperature follows the model's generation_config."""
    temperature = plan.request.temperature
    if temperature is not None:
        return bool(temperature)
    return bool(getattr(lm.model.generation_config, "do_sample", None) or False)


def sampling_args(lm: HFModel, plan: Plan) -> tuple[dict[str, Any], int | None]:
    """(temperature, top_k, top_p for the manager, seed) as ``generate`` would sample the plan:
    the request's settings, else the model's generation_config, else transformers' defaults.
    A greedy request keeps one candidate (``top_k=1``)."""
    if not samples(lm, plan):
        return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}, None
    request, config = plan.request, lm.model.generation_config

    def default(name: str) -> Any:
        value = getattr(config, name, None)
        return _GENERATE_DEFAULTS[name] if value is None else value

    top_k = plan.options.get("top_k", default("top_k"))
    top_p = request.top_p if request.top_p is not None else default("top_p")
    return {"temperature": float(request.temperature or default("temperature")),
            "top_k": int(top_k) if top_k else lm.vocab_size,  # 0/None: no top-k
            "top_p": float(top_p)}, request.seed


def make_job(lm: HFModel, plan: Plan, *, whole: bool, model: str) -> CBJob:
    """The request's job: its sampling arguments, generator and grammar matcher (any error here
    fails this request alone, before it is queued)."""
    sampling, seed = sampling_args(lm, plan)
    job = CBJob(plan=plan, whole=whole, model=model, sampling=sampling)
    if seed is not None:
        import torch

        job.generator = torch.Generator(device=lm.device).manual_seed(seed)
    if plan.grammar is not None:
        import xgrammar as xgr

        job.matcher = xgr.GrammarMatcher(plan.grammar)
    job.reader = TextReader(lm, plan, split=not whole)
    return job


def _processor_classes() -> tuple[type, type]:
    """The two per-request processors, as subclasses of the manager's own base class."""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
    )

    class _Rows(ContinuousBatchingLogitsProcessor):
        """Base: finds this step's rows whose request it acts on (host side, before the forward
        pass); the rows of ``scores`` are the requests with a new token, in batch order."""

        supported_kwargs: dict[str, type] = {}
        ignored_kwargs: tuple[str, ...] = ()

        def __init__(self, engine: CBEngine) -> None:
            self.engine = engine
            self.rows: list[tuple[int, CBJob]] = []

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            jobs = self.engine.jobs
            self.rows = []
            for i, future in enumerate(requests_with_new_token):
                job = jobs.get(future.state.request_id)
                if job is not None and self.takes(job, future.state, i):
                    self.rows.append((i, job))
            flags = torch.zeros(len(requests_with_new_token), dtype=torch.int32)
            for i, _ in self.rows:
                flags[i] = 1
            return flags

        def takes(self, job: CBJob, state: Any, row: int) -> bool:
            raise NotImplementedError

    class GrammarRows(_Rows):
        """Each constrained request's xgrammar bitmask on its own row (first in the list, so
        top-k/top-p and greedy choose among allowed tokens only)."""

        def __init__(self, engine: CBEngine) -> None:
            import xgrammar as xgr

            super().__init__(engine)
            self.xgr = xgr
            self.bitmask = xgr.allocate_token_bitmask(engine.capacity, engine.lm.vocab_size)

        def takes(self, job: CBJob, state: Any, row: int) -> bool:
            matcher = job.matcher
            if matcher is None:
                return False
            # Advance the matcher over the tokens generated since the last step. After a soft
            # reset (the manager preempted the request) earlier output is part of its prompt.
            prompt = len(job.plan.ids)
            initial, generated = state.initial_tokens, state.generated_tokens
            total = len(initial) + len(generated) - prompt
            while job.accepted < total:
                k = prompt + job.accepted
                token = initial[k] if k < len(initial) else generated[k - len(initial)]
                job.accepted += 1
                if not matcher.accept_token(token):  # cannot happen under the mask
                    job.matcher = None
                    return False
            if matcher.is_terminated():
                return False
            matcher.fill_next_token_bitmask(self.bitmask, row)
            return True

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            if not self.rows:
                return scores
            live = [i for i, _ in self.rows]
            if scores.device.type in ("cpu", "cuda"):
                self.xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device),
                                                     indices=live)
                return scores
            on_cpu = scores.to("cpu")
            self.xgr.apply_token_bitmask_inplace(on_cpu, self.bitmask, indices=live)
            return on_cpu.to(scores.device)

    class SeededRows(_Rows):
        """A seeded request's token drawn from its own generator (last in the list, after the
        manager's temperature / top-k / top-p): its row keeps that one token, which the
        manager's sampler then cannot but pick."""

        def takes(self, job: CBJob, state: Any, row: int) -> bool:
            return job.generator is not None

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            for i, job in self.rows:
                probs = torch.softmax(scores[i].float(), dim=-1)
                token = torch.multinomial(probs, 1, generator=job.generator)
                scores[i].fill_(float("-inf"))
                scores[i, token] = 0.0
            return scores

    return GrammarRows, SeededRows


class CBEngine:
    """The :class:`~modelplug.scheduling.Engine` over one model's continuous-batching manager.

    The scheduler's worker is the router: :meth:`step` waits for the manager's next outputs and
    hands each request's tokens to its ticket.
    """

    def __init__(self, lm: HFModel, *, capacity: int, kv_cache_tokens: int | None,
                 name: str) -> None:
        self.lm, self.capacity, self.name = lm, capacity, name
        self.jobs: dict[str, CBJob] = {}
        self._ids = itertools.count()
        self._interrupt = threading.Event()
        self._closed = False
        #: The thread that holds the manager paused (the locked path), if any.
        self.paused_by: int | None = None
        self.manager = self._start(kv_cache_tokens)

    # -- the manager ---------------------------------------------------------------------------

    def _start(self, kv_cache_tokens: int | None) -> Any:
        import torch
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        lm, model = self.lm, self.lm.model
        self.attn = model.config._attn_implementation
        on_cpu = lm.device.type in ("cpu", "mps")
        page = ContinuousBatchingConfig.page_size
        if kv_cache_tokens is None and on_cpu:
            kv_cache_tokens = lm.context
        blocks = math.ceil(kv_cache_tokens / page) if kv_cache_tokens else None
        # The manager builds its per-request processors only for settings its generation
        # config uses (temperature != 1, top_k, top_p < 1); every request then passes its own.
        config = GenerationConfig(do_sample=True, temperature=0.5, top_k=50, top_p=0.5,
                                  eos_token_id=sorted(lm.eos_ids), pad_token_id=lm.pad_id)
        cb_config = ContinuousBatchingConfig(
            num_blocks=blocks, max_requests_per_batch=self.capacity,
            max_batch_tokens=CPU_MAX_BATCH_TOKENS if on_cpu else None,
            per_request_processors=True, allow_block_sharing=True,
            use_cuda_graph=False, use_async_batching=False)
        with torch.inference_mode():
            manager = model.init_continuous_batching(generation_config=config,
                                                     continuous_batching_config=cb_config)
            try:
                self._plug(manager)
                manager.warmup()  # builds the paged cache here, so a failure shows here
                #: The longest request (prompt and output) the paged cache holds alone.
                self.max_tokens = _single_request_tokens(manager)

                def start() -> None:
                    with torch.inference_mode():  # thread-local; the loop runs in the caller's
                        manager.start()

                # Started from a daemon thread, the manager's generation thread is a daemon
                # too: a process that never calls shutdown_all() still exits.
                starter = threading.Thread(target=start, daemon=True)
                starter.start()
                starter.join()
            except BaseException:
                with contextlib.suppress(Exception):
                    if manager.is_running():
                        manager.stop(block=True, timeout=5, hard_stop=True)
                if model.config._attn_implementation != self.attn:
                    model.set_attn_implementation(self.attn)
                raise
        self.cb_attn = model.config._attn_implementation
        return manager

    def _plug(self, manager: Any) -> None:
        """Put the two per-request processors into the manager's processor list."""
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingLogitsProcessor,
            ContinuousBatchingLogitsProcessorList,
        )
        from transformers.generation.logits_process import LogitsProcessorList

        grammar_rows, seeded_rows = _processor_classes()
        processors = [grammar_rows(self), *manager.logit_processor.logits_processor,
                      seeded_rows(self)]
        plugged = ContinuousBatchingLogitsProcessorList(LogitsProcessorList(processors))
        # One argument row per per-request processor (the list counts only those it converts).
        plugged.tensors_required = sum(isinstance(p, ContinuousBatchingLogitsProcessor)
                                       for p in processors)
        names = {type(p).__name__ for p in plugged.logits_processor}
        if len(plugged.logits_processor) != len(processors) or \
                not {"ContinuousBatchingTopKLogitsWarper", "GrammarRows"} <= names:
            raise RuntimeError(f"unexpected continuous-batching processors: {names}")
        manager.logit_processor = plugged

    def takes(self, plan: Plan) -> str | None:
        """Why ``plan`` cannot be batched (then it takes the locked path), or None."""
        if plan.extra_inputs is not None:
            return "image inputs"
        # Processors the manager has no per-request version of (top_k it has): penalties
        # always matter, min_p / typical_p only when sampling.
        unbatched = {"repetition_penalty", "no_repeat_ngram_size"}
        if samples(self.lm, plan):
            unbatched |= {"min_p", "typical_p"}
        if plan.options.keys() & unbatched:
            return f"{sorted(plan.options.keys() & unbatched)} have no per-request version"
        if len(plan.ids) + plan.max_new > self.max_tokens:
            return f"longer than the paged cache ({self.max_tokens} tokens; kv_cache_tokens=)"
        if not self.running:
            return "the continuous-batching loop has stopped"
        return None

    @property
    def running(self) -> bool:
        return not self._closed and self.manager.is_running()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The model to drive directly (the locked path, embeddings): the manager paused at its
        next step (its requests keep their cache), and the model's own attention back."""
        model = self.lm.model
        with contextlib.ExitStack() as stack:
            if self.running:
                with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                    stack.enter_context(self.manager.pause())
            switched = model.config._attn_implementation != self.attn
            if switched:  # the paged attention would silently misread a plain generate's cache
                model.set_attn_implementation(self.attn)
            self.paused_by = threading.get_ident()
            try:
                yield
            finally:
                self.paused_by = None
                if switched:
                    model.set_attn_implementation(self.cb_attn)

    def interrupt(self) -> None:
        """Let the router look at the scheduler's queue (a new or cancelled request)."""
        self._interrupt.set()

    # -- the Engine protocol -------------------------------------------------------------------

    def admit(self, ticket: Ticket, running: list[Ticket]) -> bool:
        job: CBJob = ticket.job
        job.rid, job.ticket = f"modelplug-{next(self._ids)}", ticket
        self.jobs[job.rid] = job
        added = self.manager.add_request(job.plan.ids, request_id=job.rid,
                                         max_new_tokens=job.plan.max_new, streaming=True,
                                         eos_token_id=sorted(self.lm.eos_ids), **job.sampling)
        if added is None:
            job.closed = True
            raise ProviderUnavailableError(
                f"{self.name}: the continuous-batching loop refused the request (it is "
                "stopping or stopped).")
        return True

    def step(self, running: list[Ticket]) -> list[Ticket]:
        manager, outputs = self.manager, []
        while True:
            output = manager.get_result(timeout=_POLL_S)
            if output is not None:
                outputs.append(output)
                while (more := manager.get_result(timeout=0)) is not None:
                    outputs.append(more)
                break
            if self._interrupt.is_set():
                break
            if not manager.is_running():
                error = manager.background_thread_status.fatal_error
                raise ProviderUnavailableError(
                    f"{self.name}: the continuous-batching loop stopped"
                    + (f" ({error})" if error else "") + ".")
        self._interrupt.clear()
        done = []
        for output in outputs:
            job = self.jobs.get(output.request_id)
            if job is None or job.ticket is None or job.ticket.ended:
                continue
            try:
                ended = self._read(job, output)
            except Exception as exc:  # this request's output could not be read: it alone fails
                self._cancel(job)
                job.ticket.fail(exc)
                ended = True
            if ended:
                done.append(job.ticket)
        return done

    def release(self, ticket: Ticket) -> None:
        job: CBJob = ticket.job
        if job.rid:
            self._cancel(job)
            self.jobs.pop(job.rid, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.manager.stop(block=True, timeout=5, hard_stop=True)

    # -- reading outputs -----------------------------------------------------------------------

    def _cancel(self, job: CBJob) -> None:
        if not job.closed:
            job.closed = True
            self.manager.cancel_request(job.rid)

    def _read(self, job: CBJob, output: Any) -> bool:
        """Hand a request's new tokens to its ticket; True once it has ended."""
        ticket, reader, plan = job.ticket, job.reader, job.plan
        assert ticket is not None and reader is not None
        if output.error is not None:
            job.closed = True
            ticket.fail(ProviderUnavailableError(
                f"{self.name}: generation failed ({output.error})."))
            return True
        tokens = output.generated_tokens
        new, job.seen = tokens[job.seen:], len(tokens)
        for token in new:
            if token in self.lm.eos_ids:
                job.closed = True
                return self._end(job, "stop")
            chunk, hit = reader.feed(token)
            if chunk is not None and not job.whole:
                ticket.put(chunk)
            if hit:
                self._cancel(job)  # the rest of its tokens are not needed
                return self._end(job, "stop")
            if len(reader.ids) >= plan.max_new:
                job.closed = True
                return self._end(job, "length")
        if output.is_finished():
            job.closed = True
            return self._end(job, "length")
        return False

    def _end(self, job: CBJob, reason: str) -> bool:
        ticket, reader, plan = job.ticket, job.reader, job.plan
        assert ticket is not None and reader is not None
        if job.whole:
            ticket.finish(generation.finish(self.lm, plan, reader.ids, reason, job.model))
        else:
            ticket.finish(reader.last(reason, job.model, len(plan.ids), len(reader.ids)))
        return True


def _single_request_tokens(manager: Any) -> int:
    """The longest request the manager's paged cache can hold on its own (longer ones would
    stop its loop), as its own sizing computes it."""
    try:
        from transformers.generation.continuous_batching.model_runner import (
            infer_max_single_request_tokens,
        )

        return int(infer_max_single_request_tokens(manager.batch_processor.cache))
    except (ImportError, AttributeError):
        resolved = manager.continuous_batching_config
        return int(resolved.num_blocks * resolved.page_size)


class CBScheduler(Scheduler):
    """The model's :class:`~modelplug.scheduling.Scheduler`, whose worker routes the manager's
    outputs: a new or cancelled request interrupts its wait for them."""

    engine: CBEngine

    def submit(self, job: Any, loop: Any = None) -> Ticket:
        if self.engine.paused_by == threading.get_ident():
            raise ConfigurationError(
                f"The in-process model {self.name} is generating directly in this thread (a "
                "stream on its locked path is still open), so a batched request from inside it "
                "would wait for itself. Finish or close that stream first, or make the call "
                "from another thread.")
        ticket = super().submit(job, loop)
        self.engine.interrupt()
        return ticket

    def wake(self) -> None:
        super().wake()
        self.engine.interrupt()

    def shutdown(self, reason: str = "the process is stopping", timeout: float = 5.0) -> None:
        super().shutdown(reason, timeout)
        self.engine.close()  # also when no request ever started the worker

    def retire(self) -> None:
        """The model was unloaded: requests already queued finish, then the manager stops (at
        once if no request ever started the worker, which would otherwise stop it)."""
        retire = getattr(super(), "retire", None)
        if retire is not None:
            retire()
        if self._thread is None:
            self.engine.close()


def collect(ticket: Ticket) -> Any:
    """The one item of a whole-response ticket."""
    items = list(ticket)
    return items[-1]


async def acollect(ticket: Ticket) -> Any:
    items = [item async for item in ticket]
    return items[-1]


__all__ = [
    "DEFAULT_MAX_BATCH",
    "CBEngine",
    "CBJob",
    "CBScheduler",
    "acollect",
    "collect",
    "make_job",
    "samples",
    "sampling_args",
]

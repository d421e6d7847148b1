"""Continuous batching for ``hf:`` models: transformers' own manager, and what it lacks.

Concurrent requests on one loaded model are decoded together by transformers' continuous
batching (``model.init_continuous_batching()``: a ``ContinuousBatchingManager`` with a paged KV
cache and its own generation thread; new requests join the running batch at the next step,
finished ones leave it, complete prefix blocks are shared between requests). What it covers is
used as it is: ``add_request`` (prompt ids, ``max_new_tokens``, end tokens, streaming outputs),
``cancel_request``, its scheduler and cache (sized by ``max_batch`` and ``kv_cache_tokens``),
``pause()`` for the calls that must drive the model directly.

What it does not cover is closed here, around it:

- one request's own logits processing: the manager applies one processor list to every row,
  and samples every row or none. Its per-request temperature / top-k / top-p processors sort the
  whole vocabulary for every row at every step, greedy rows included (measured: 41 ms for 8
  rows of SmolLM2's 49k vocabulary on one CPU core, more than the forward pass), and it has no
  per-request penalties, grammar or seed. So the manager decodes greedily (argmax) and one
  processor of its own kind (:class:`RequestRows`, a ``ContinuousBatchingLogitsProcessor``)
  acts on the rows that need it, with ``generate``'s own processor classes in ``generate``'s
  order: repetition penalties, then the request's grammar bitmask (structured output, forced
  tool calls), then, for a sampled request, temperature / top-k / top-p / min-p / typical-p and
  a draw from its own seeded ``torch.Generator``, left as the row's only candidate. Greedy rows
  without constraints are not touched;
- stop sequences, incremental decoding, think tags, tool-call parsing and each caller's own
  stream: one router (the :class:`~modelplug.scheduling.Scheduler` worker driving
  :class:`CBEngine`) reads the manager's outputs, feeds each request's tokens to its
  :class:`~modelplug.backends.hf.generation.TextReader`, cancels a request in the manager the
  moment its stop sequence appears, and puts chunks (or the whole response) on its
  :class:`~modelplug.scheduling.Ticket`;
- back-pressure, cancellation of queued requests, stats and shutdown: the scheduler admits at
  most ``max_batch`` requests into the manager; more wait in its bounded queue.

The processor runs on the host between steps, so the manager runs without CUDA graphs and async
double-buffering (a graph replay would skip it).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from modelplug.backends import structured
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
#: Tokens per KV block on CPU/MPS. Prefixes are shared in whole blocks, so a chat's next turn
#: re-reads at most this many tokens of the conversation before its new ones.
#: (Measured on SmolLM2, 2 CPU cores: 64 was as fast as transformers' default of 256 for 8
#: concurrent requests, and a 5-turn chat's second turn started 3x sooner.)
CPU_PAGE_SIZE = 64
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
    #: ``generate``'s processors for this request that read its tokens (repetition penalties).
    penalties: list[Any] = field(default_factory=list)
    #: Its warpers when it samples (temperature, top-k, top-p, ...); None when greedy.
    warpers: list[Any] | None = None
    #: The request's own generator (a seed), else None (the process's random state).
    generator: Any = None
    #: The request's grammar state (structured output, forced tool calls), else None.
    matcher: Any = None
    reader: TextReader | None = None
    rid: str = ""
    ticket: Ticket | None = None
    #: Tokens of the manager's output already read, and already fed to the matcher.
    seen: int = 0
    accepted: int = 0
    #: The manager holds the request no more (ended, failed or cancelled there).
    closed: bool = False
    #: What broke this request's own processing (it then fails alone, at the router).
    error: BaseException | None = None

    @property
    def custom(self) -> bool:
        """Whether its row needs more than the manager's argmax."""
        return bool(self.penalties) or self.warpers is not None or self.matcher is not None


def samples(lm: HFModel, plan: Plan) -> bool:
    """Whether ``generate`` would sample this request (else greedy): temperature 0 never does,
    no temperature follows the model's generation_config."""
    temperature = plan.request.temperature
    if temperature is not None:
        return bool(temperature)
    return bool(getattr(lm.model.generation_config, "do_sample", None) or False)


def row_processors(lm: HFModel, plan: Plan) -> tuple[list[Any], list[Any] | None]:
    """(penalties, warpers or None when greedy): the processors ``generate`` would build for
    this request (its settings, else the model's generation_config, else transformers'
    defaults), in ``generate``'s order."""
    from transformers.generation import logits_process as lp

    request, options, config = plan.request, plan.options, lm.model.generation_config

    def setting(name: str) -> Any:
        if name in options:
            return options[name]
        value = getattr(config, name, None)
        return _GENERATE_DEFAULTS.get(name) if value is None else value

    penalties: list[Any] = []
    penalty = setting("repetition_penalty")
    if penalty is not None and penalty != 1.0:
        penalties.append(lp.RepetitionPenaltyLogitsProcessor(penalty))
    ngram = setting("no_repeat_ngram_size")
    if ngram:
        penalties.append(lp.NoRepeatNGramLogitsProcessor(ngram))
    if not samples(lm, plan):
        return penalties, None
    warpers: list[Any] = []
    temperature = request.temperature or setting("temperature")
    if temperature is not None and temperature != 1.0:
        warpers.append(lp.TemperatureLogitsWarper(float(temperature)))
    top_k = setting("top_k")
    if top_k:
        warpers.append(lp.TopKLogitsWarper(int(top_k)))
    top_p = request.top_p if request.top_p is not None else setting("top_p")
    if top_p is not None and top_p < 1.0:
        warpers.append(lp.TopPLogitsWarper(float(top_p)))
    min_p = setting("min_p")
    if min_p is not None:
        warpers.append(lp.MinPLogitsWarper(float(min_p)))
    typical_p = setting("typical_p")
    if typical_p is not None and typical_p < 1.0:
        warpers.append(lp.TypicalLogitsWarper(float(typical_p)))
    return penalties, warpers


def make_job(lm: HFModel, plan: Plan, *, whole: bool, model: str) -> CBJob:
    """The request's job: its processors, generator and grammar matcher (any error here fails
    this request alone, before it is queued)."""
    penalties, warpers = row_processors(lm, plan)
    job = CBJob(plan=plan, whole=whole, model=model, penalties=penalties, warpers=warpers)
    if warpers is not None and plan.request.seed is not None:
        import torch

        job.generator = torch.Generator(device=lm.device).manual_seed(plan.request.seed)
    if plan.grammar is not None:
        job.matcher = lm.constraint(plan.grammar, plan.reasoning)
    job.reader = TextReader(lm, plan, split=not whole)
    return job


def _request_rows_class() -> type:
    """:class:`RequestRows`, a subclass of the manager's own per-request processor base."""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
    )

    class RequestRows(ContinuousBatchingLogitsProcessor):
        """Each request's own logits processing, on its own row (see the module docstring).

        :meth:`prepare_tensor_args` runs on the host before the forward pass, with the requests
        that get a new token this step, in the order of the rows of ``scores``.
        """

        supported_kwargs: dict[str, type] = {}
        ignored_kwargs: tuple[str, ...] = ()

        def __init__(self, engine: CBEngine) -> None:
            self.engine = engine
            self.bitmask = structured.torch_bitmask(engine.capacity, engine.lm.vocab_size)
            self.masked: list[int] = []
            self.rows: list[tuple[int, CBJob, Any]] = []

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            jobs, device = self.engine.jobs, self.engine.lm.device
            self.masked, self.rows = [], []
            for i, future in enumerate(requests_with_new_token):
                job = jobs.get(future.state.request_id)
                if job is None or not job.custom or job.error is not None:
                    continue
                try:
                    self._prepare(i, job, future.state, device)
                except Exception as exc:  # this request alone fails (at the router)
                    job.error = exc
            return torch.zeros(len(requests_with_new_token), dtype=torch.int32)

        def _prepare(self, i: int, job: CBJob, state: Any, device: Any) -> None:
            # Generated so far; after a soft reset (the manager preempted the request) earlier
            # output is part of its prompt.
            generated = (state.initial_tokens + state.generated_tokens)[len(job.plan.ids):]
            if job.matcher is not None and self._advance(job, generated):
                job.matcher.fill(self.bitmask[i].data_ptr())
                self.masked.append(i)
            if job.penalties or job.warpers is not None:
                ids = torch.tensor([job.plan.ids + generated], device=device) \
                    if job.penalties else None
                self.rows.append((i, job, ids))

        @staticmethod
        def _advance(job: CBJob, generated: list[int]) -> bool:
            """Feed the matcher the tokens since the last step; whether it still constrains."""
            matcher = job.matcher
            while job.accepted < len(generated):
                token = generated[job.accepted]
                job.accepted += 1
                if not matcher.consume(token):  # cannot happen under the mask
                    job.matcher = None
                    return False
            return True  # a finished grammar still masks: it allows only the end token

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            if self.masked:
                structured.apply_torch_bitmask(scores, self.bitmask, self.masked)
            for i, job, ids in self.rows:
                try:
                    row = scores[i:i + 1]
                    for processor in job.penalties:
                        row = processor(ids, row)
                    if job.warpers is None:
                        scores[i] = row[0]
                        continue
                    for warper in job.warpers:
                        row = warper(ids, row)
                    probs = torch.softmax(row[0].float(), dim=-1)
                    token = torch.multinomial(probs, 1, generator=job.generator)
                    scores[i].fill_(float("-inf"))  # the draw is the row's only candidate
                    scores[i, token] = 0.0
                except Exception as exc:  # this request alone fails (at the router)
                    job.error = exc
            return scores

    return RequestRows


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
        page = CPU_PAGE_SIZE if on_cpu else ContinuousBatchingConfig.page_size
        if kv_cache_tokens is None and on_cpu:
            kv_cache_tokens = lm.context
        blocks = math.ceil(kv_cache_tokens / page) if kv_cache_tokens else None
        # Greedy, with no processors of its own: each request's are RequestRows'.
        config = GenerationConfig(do_sample=False, eos_token_id=sorted(lm.eos_ids),
                                  pad_token_id=lm.pad_id)
        cb_config = ContinuousBatchingConfig(
            num_blocks=blocks, page_size=page, max_requests_per_batch=self.capacity,
            max_batch_tokens=CPU_MAX_BATCH_TOKENS if on_cpu else None,
            allow_block_sharing=True, use_cuda_graph=False, use_async_batching=False)
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
        """Make :class:`RequestRows` the manager's processor list (its own is empty: greedy)."""
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingLogitsProcessorList,
        )
        from transformers.generation.logits_process import LogitsProcessorList

        if manager.logit_processor.logits_processor:
            raise RuntimeError("the greedy manager built logits processors of its own: "
                               f"{manager.logit_processor}")
        plugged = ContinuousBatchingLogitsProcessorList(
            LogitsProcessorList([_request_rows_class()(self)]))
        # One argument row per per-request processor (the list counts only those it converts
        # from generate's own).
        plugged.tensors_required = 1
        if not plugged.do_processing:
            raise RuntimeError(f"the manager would not run {plugged}")
        manager.logit_processor = plugged

    def takes(self, plan: Plan) -> str | None:
        """Why ``plan`` cannot be batched (then it takes the locked path), or None."""
        if plan.extra_inputs is not None:
            return "image inputs (the manager takes token ids only)"
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
                                         eos_token_id=sorted(self.lm.eos_ids))
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
        if job.error is not None:
            self._cancel(job)
            ticket.fail(job.error)
            return True
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
    "row_processors",
    "samples",
]

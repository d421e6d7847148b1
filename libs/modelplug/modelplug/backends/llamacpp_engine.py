"""llama.cpp continuous batching: many sequences in one ``llama_batch`` over one context.

As llama.cpp's own server and ``batched`` example do: one context holding up to ``n_parallel``
sequences, one sequence id per slot, each request with its own sampler chain (temperature,
top-k/p, seed, penalties, grammar). Each step evaluates, in one ``llama_decode``, the newest token
of every decoding sequence and prompt chunks of newly admitted ones (decoders first, so a long
prompt never stalls running streams), then samples every sequence from its own row of logits.

Each slot has a KV cache of its own (``n_ctx`` cells: llama.cpp's non-unified cache, one stream
per sequence) and attention runs with flash attention, which visits a sequence's cells in order.
Together they keep a request's arithmetic apart from what runs beside it: on a fresh cache a
greedy answer in any batch is exactly its single answer. A unified cache, whose cells interleave
sequences, changed 4 to 6 of 10 greedy answers on SmolLM2; a slot's own history can still place
cells out of order and flip a near-tied token (within a few tenths of a logit). The price is
memory: ``n_parallel`` caches of ``n_ctx`` cells.

Prefix reuse: a finished sequence leaves its tokens in its slot's cache. A new request whose
prompt starts with a slot's whole cache (a chat's or an agent's next turn re-sends the
conversation) takes that slot and evaluates only its new tokens.
"""

from __future__ import annotations

import codecs
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from modelplug.scheduling import Ticket
from modelplug.types import ChatChunk, Usage

#: Sequences decoded together unless ``n_parallel=`` says otherwise.
DEFAULT_N_PARALLEL = 4


@dataclass
class LlamaJob:
    """One request as the engine runs it, built in the caller's thread (so a bad prompt or
    grammar fails there, before it is queued)."""

    tokens: list[int]
    max_new: int
    #: The request's own ``LlamaSampler`` chain (grammar, penalties, temperature, seed).
    sampler: Any
    stops: list[str]
    model: str
    #: The request's grammar state (structured output, tool turns): its mask is in the sampler
    #: chain; each sampled token advances it.
    constraint: Any = None
    #: A thinking model's ``<think>`` splitter: reasoning goes to its own channel.
    splitter: Any = None
    #: Whether special tokens are written out as text (a model whose think tags are special).
    special: bool = False


@dataclass
class _Slot:
    seq: int
    #: Tokens whose keys and values this slot's sequence holds in the cache, in order.
    cached: list[int] = field(default_factory=list)
    ticket: Ticket | None = None
    last_used: float = 0.0


@dataclass
class _Run:
    """A running request: its slot, every token it has (prompt, then generated), and how many
    of them the cache holds."""

    slot: _Slot
    tokens: list[int]
    order: int
    prompt_len: int
    reused: int
    decoder: Any
    scanner: Any
    n_out: int = 0


class LlamaEngine:
    """The :class:`~modelplug.scheduling.Engine` of one loaded GGUF model (see module doc)."""

    def __init__(self, llm: Any, *, n_ctx: int, n_parallel: int, n_threads: int | None,
                 n_batch: int) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self.llm, self.vocab = llm, llm._model.vocab
        self.capacity = min(n_parallel, llama_cpp.llama_max_parallel_sequences())
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        # Non-unified: the context is split into one n_ctx stream per sequence.
        params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx * self.capacity, \
            self.capacity, False
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        params.n_batch = params.n_ubatch = n_batch
        params.embeddings = False
        # Every core for one decode: llama-cpp-python's default (half the cores for single
        # sequences) ran at about half llama-server's speed.
        params.n_threads = params.n_threads_batch = n_threads or _cores()
        self.ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.n_batch = n_batch
        self.batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self.slots = [_Slot(seq) for seq in range(self.capacity)]
        self._order = itertools.count()

    # -- the Engine protocol -------------------------------------------------------------------

    def admit(self, ticket: Ticket, running: list[Ticket]) -> bool:
        from modelplug.backends.llamacpp import StopScanner

        job: LlamaJob = ticket.job
        free = [s for s in self.slots if s.ticket is None]
        if not free:
            return False
        # A slot whose whole cache starts the prompt (a conversation's next turn) is reused;
        # else the least recently used free slot starts empty. A cache is never cut in the
        # middle: a partly removed sequence was seen to leave the next request wrong keys.
        slot = max(free, key=lambda s: (_reusable(s.cached, job.tokens), -s.last_used))
        # At least one prompt token is evaluated: its logits give the first new token.
        keep = min(_reusable(slot.cached, job.tokens), len(job.tokens) - 1)
        self.ctx.kv_cache_seq_rm(slot.seq, keep, -1)
        del slot.cached[keep:]
        slot.ticket = ticket
        ticket.state = _Run(slot=slot, tokens=list(job.tokens), order=next(self._order),
                            prompt_len=len(job.tokens), reused=keep,
                            decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"),
                            scanner=StopScanner(job.stops))
        return True

    def step(self, running: list[Ticket]) -> list[Ticket]:
        import llama_cpp

        self.batch.reset()
        rows: list[tuple[Ticket, int, int | None]] = []
        for ticket, n in self._plan(running):
            run: _Run = ticket.state
            start = len(run.slot.cached)
            last = start + n == len(run.tokens)
            rows.append((ticket, n, self.batch.batch.n_tokens + n - 1 if last else None))
            self._add(run.tokens[start:start + n], start, run.slot.seq, last)
        code = llama_cpp.llama_decode(self.ctx.ctx, self.batch.batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed (code {code}) on a batch of "
                               f"{len(rows)} sequence(s)")
        done = []
        for ticket, n, index in rows:
            run = ticket.state
            start = len(run.slot.cached)
            run.slot.cached.extend(run.tokens[start:start + n])
            if index is not None and self._sample(ticket, run, index):
                done.append(ticket)
        return done

    def release(self, ticket: Ticket) -> None:
        run = ticket.state
        if isinstance(run, _Run) and run.slot.ticket is ticket:
            run.slot.ticket, run.slot.last_used = None, time.monotonic()
        ticket.state = None

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()

    # -- one step ------------------------------------------------------------------------------

    def _plan(self, running: list[Ticket]) -> list[tuple[Ticket, int]]:
        """How many tokens of each request this step evaluates: one for each decoding request,
        then prompt chunks, oldest request first, as far as the batch allows."""
        todo = {id(t): len(t.state.tokens) - len(t.state.slot.cached) for t in running}
        plan = [(t, 1) for t in running if todo[id(t)] == 1]
        budget = self.n_batch - len(plan)
        for ticket in sorted((t for t in running if todo[id(t)] > 1),
                             key=lambda t: t.state.order):
            if budget <= 0:
                break
            n = min(todo[id(ticket)], budget)
            plan.append((ticket, n))
            budget -= n
        return plan

    def _add(self, tokens: list[int], start: int, seq: int, logits_last: bool) -> None:
        batch, n0 = self.batch.batch, self.batch.batch.n_tokens
        for i, token in enumerate(tokens):
            batch.token[n0 + i] = token
            batch.pos[n0 + i] = start + i
            batch.n_seq_id[n0 + i] = 1
            batch.seq_id[n0 + i][0] = seq
            batch.logits[n0 + i] = False
        if logits_last:
            batch.logits[n0 + len(tokens) - 1] = True
        batch.n_tokens = n0 + len(tokens)

    # -- sampling ------------------------------------------------------------------------------

    def _sample(self, ticket: Ticket, run: _Run, index: int) -> bool:
        """Sample the request's next token from batch row ``index``; True when it is finished."""
        import llama_cpp

        job: LlamaJob = ticket.job
        token = job.sampler.sample(self.ctx, index)  # the chain also accepts it (penalties)
        if job.constraint is not None:
            job.constraint.consume(token)
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            return self._finish(ticket, run, "stop")
        run.n_out += 1
        piece = run.decoder.decode(self.llm.detokenize([token], special=job.special))
        text, hit = run.scanner.feed(piece)
        chunk = _chunk(job, text)
        if chunk is not None:
            ticket.put(chunk)
        if hit:
            return self._finish(ticket, run, "stop")
        if run.n_out >= job.max_new:
            return self._finish(ticket, run, "length")
        run.tokens.append(token)
        return False

    def _finish(self, ticket: Ticket, run: _Run, reason: str) -> bool:
        job: LlamaJob = ticket.job
        tail = "" if run.scanner.hit else run.scanner.flush(run.decoder.decode(b"", final=True))
        last = _chunk(job, tail) or ChatChunk()
        if job.splitter is not None:
            text, reasoning = job.splitter.flush()
            last.text, last.reasoning = last.text + text, last.reasoning + reasoning
        ticket.finish(ChatChunk(text=last.text, reasoning=last.reasoning, finish_reason=reason,
                                model=job.model,
                                usage=Usage(input_tokens=run.prompt_len, output_tokens=run.n_out,
                                            cache_read_tokens=run.reused)))
        return True


def _chunk(job: LlamaJob, text: str) -> ChatChunk | None:
    """The chunk for new answer text (think tags split out), or None when nothing shows yet."""
    reasoning = ""
    if job.splitter is not None:
        text, reasoning = job.splitter.feed(text)
    return ChatChunk(text=text, reasoning=reasoning) if text or reasoning else None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _reusable(cached: list[int], prompt: list[int]) -> int:
    """How many cached tokens a prompt can reuse: all of them if they start it, else none."""
    return len(cached) if prompt[:len(cached)] == cached else 0


__all__ = ["DEFAULT_N_PARALLEL", "LlamaEngine", "LlamaJob"]

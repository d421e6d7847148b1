"""The locked generation path: one left-padded ``model.generate`` over a batch of plans.

Two hooks this module owns make a batch answer exactly as single calls would: a per-row stopping
criterion (:class:`RowStops`: end tokens, stop sequences, each row's own token budget,
cancellation) and, for structured output and tool turns, the grammar's logits mask per row
(:class:`GrammarMask`). Greedy answers in a batch are the single answers. Streaming runs
``generate`` in a thread with a token streamer (:func:`stream_plan`).

Also here: what every generation path shares to read the output: the incremental
:class:`Detokenizer` and :func:`finish` (ids to a response).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from modelplug.backends import structured, tooling
from modelplug.backends.hf.loading import HFModel
from modelplug.backends.hf.planning import SAMPLING_ONLY_EXTRAS, Plan
from modelplug.backends.hf.tool_formats import parse_tool_calls
from modelplug.backends.llamacpp import StopScanner
from modelplug.backends.reasoning import ThinkTagSplitter, split_think_tags
from modelplug.types import ChatChunk, ChatResponse, ToolCallDelta, Usage


class _Row:
    __slots__ = ("count", "finish", "max_new", "stops")

    def __init__(self, plan: Plan) -> None:
        self.max_new, self.stops = plan.max_new, plan.stops
        self.count, self.finish = 0, None


class RowStops:
    """Stopping criterion per batch row: end token, stop sequence, row budget, cancellation.

    It also records where each row ended, so a batch is cut row by row exactly where a single
    call would have stopped.
    """

    def __init__(self, lm: HFModel, plans: list[Plan], width: int,
                 cancel: threading.Event | None, skip_special: list[bool]) -> None:
        self.lm, self.width, self.cancel = lm, width, cancel
        self.rows = [_Row(p) for p in plans]
        self.skip = skip_special
        self.generated: Any = None

    def __call__(self, input_ids: Any, scores: Any = None, **kwargs: Any) -> Any:
        import torch

        gen = input_ids[:, self.width:]
        self.generated = gen
        n = gen.shape[1]
        cancelled = self.cancel is not None and self.cancel.is_set()
        done = []
        for i, row in enumerate(self.rows):
            if row.finish is None and n:
                if int(gen[i, -1]) in self.lm.eos_ids:
                    row.count, row.finish = n - 1, "stop"
                elif row.stops and any(
                        s in self.lm.decode(gen[i].tolist(), self.skip[i]) for s in row.stops):
                    row.count, row.finish = n, "stop"
                elif n >= row.max_new:
                    row.count, row.finish = n, "length"
                elif cancelled:
                    row.count, row.finish = n, "stop"
            done.append(row.finish is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def results(self) -> list[tuple[list[int], str]]:
        out = []
        for i, row in enumerate(self.rows):
            if row.finish is None:  # generate ended first (its own max length)
                row.count = 0 if self.generated is None else self.generated.shape[1]
                row.finish = "length"
            ids = [] if self.generated is None else self.generated[i, :row.count].tolist()
            out.append((ids, row.finish))
        return out


class GrammarMask:
    """The grammar's token mask per constrained row (rows with no grammar generate freely)."""

    def __init__(self, lm: HFModel, plans: list[Plan], stops: RowStops) -> None:
        self.stops = stops
        self.matchers = [lm.constraint(p.grammar, p.reasoning) if p.grammar is not None
                         else None for p in plans]
        self.bitmask = structured.torch_bitmask(len(plans), lm.vocab_size)
        self.started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        live = []
        for i, matcher in enumerate(self.matchers):
            if matcher is None or self.stops.rows[i].finish is not None:
                continue
            # A finished grammar still masks: it allows only the end token.
            if self.started and not matcher.consume(int(input_ids[i, -1])):
                self.matchers[i] = None
                continue
            matcher.fill(self.bitmask[i].data_ptr())
            live.append(i)
        self.started = True
        if live:
            structured.apply_torch_bitmask(scores, self.bitmask, live)
        return scores


class TokenQueue:
    """A transformers streamer that hands each new token id of a one-row generation over."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.queue.put(token)

    def end(self) -> None:
        pass


class Detokenizer:
    """Incremental decoding: text appears once its bytes are complete (no split characters)."""

    def __init__(self, lm: HFModel, skip_special: bool) -> None:
        self.lm, self.skip = lm, skip_special
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self.lm.decode(self.ids[self.prefix:self.read], self.skip)
        now = self.lm.decode(self.ids[self.prefix:], self.skip)
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        before = self.lm.decode(self.ids[self.prefix:self.read], self.skip)
        now = self.lm.decode(self.ids[self.prefix:], self.skip)
        return now[len(before):]


_END = object()


def answer(lm: HFModel, plans: list[Plan], model: str) -> list[ChatResponse]:
    """Each plan's response: one ``generate`` per distinct sampling setting."""
    groups: dict[tuple, list[int]] = {}
    for i, plan in enumerate(plans):
        key = plan.sampling_key()
        # a plan with image inputs is generated on its own
        groups.setdefault(key + ((i,) if plan.extra_inputs is not None else ()), []).append(i)
    responses: list[ChatResponse] = [ChatResponse()] * len(plans)
    for members in groups.values():
        rows = generate(lm, [plans[i] for i in members])
        for i, (ids, reason) in zip(members, rows, strict=True):
            responses[i] = finish(lm, plans[i], ids, reason, model)
    return responses

def generate(lm: HFModel, plans: list[Plan], streamer: Any = None,
             cancel: threading.Event | None = None) -> list[tuple[list[int], str]]:
    """One ``generate`` over the plans' rows (left-padded); (token ids, finish) per row."""
    import torch

    width = max(len(p.ids) for p in plans)
    input_ids = torch.tensor([[lm.pad_id] * (width - len(p.ids)) + p.ids for p in plans],
                             device=lm.device)
    attention = torch.tensor([[0] * (width - len(p.ids)) + [1] * len(p.ids) for p in plans],
                             device=lm.device)
    stops = RowStops(lm, plans, width, cancel, [p.skip_special for p in plans])
    kwargs: dict[str, Any] = {"stopping_criteria": [stops]}
    if any(p.grammar is not None for p in plans):
        kwargs["logits_processor"] = [GrammarMask(lm, plans, stops)]
    extra = plans[0].extra_inputs
    if extra:
        kwargs.update({k: v.to(lm.device) if hasattr(v, "to") else v
                       for k, v in extra.items() if k != "attention_mask"})
    request = plans[0].request
    if request.temperature == 0:
        kwargs["do_sample"] = False
    elif request.temperature is not None:
        kwargs.update(do_sample=True, temperature=request.temperature)
    if request.top_p is not None and request.temperature != 0:
        kwargs["top_p"] = request.top_p
    kwargs.update({k: v for k, v in plans[0].options.items()
                   if request.temperature != 0 or k not in SAMPLING_ONLY_EXTRAS})
    if request.seed is not None:
        torch.manual_seed(request.seed)
    with torch.inference_mode():
        lm.model.generate(input_ids=input_ids, attention_mask=attention,
                          max_new_tokens=max(p.max_new for p in plans),
                          pad_token_id=lm.pad_id, eos_token_id=sorted(lm.eos_ids),
                          streamer=streamer, **kwargs)
    return stops.results()

def finish(lm: HFModel, plan: Plan, ids: list[int], reason: str, model: str) -> ChatResponse:
    """The response for a plan's generated ``ids`` (end token excluded)."""
    text = lm.decode(ids, plan.skip_special)
    for stop in plan.stops:  # the criterion stopped at the first one; cut it off
        if stop in text:
            text = text[:text.index(stop)]
    response = ChatResponse(usage=Usage(input_tokens=len(plan.ids), output_tokens=len(ids)),
                            finish_reason=reason, model=model)
    if plan.think:
        text, response.reasoning = split_think_tags(text)
    if plan.mode == "tools":
        text, response.tool_calls = tooling.parse_output(text)
    if plan.mode == "native":
        text, response.tool_calls = parse_tool_calls(text, plan.tool_format)
    response.text = text
    if response.tool_calls:
        response.finish_reason = "tool_calls"
    return response

class TextReader:
    """One request's generated token ids in, its chunks out: incremental decoding, stop
    sequences and (for streams) think-tag splitting. Both generation paths read with it."""

    def __init__(self, lm: HFModel, plan: Plan, split: bool = True) -> None:
        self.detok = Detokenizer(lm, plan.skip_special)
        self.scanner = StopScanner(plan.stops)
        self.splitter = ThinkTagSplitter(implicit_open=plan.implicit_open) \
            if plan.think and split else None
        #: The tokens read so far (end tokens excluded), up to and with a stop sequence's last.
        self.ids: list[int] = []

    def feed(self, token: int) -> tuple[ChatChunk | None, bool]:
        """The text the token completes (None: none yet), and whether a stop sequence ended."""
        self.ids.append(token)
        text, hit = self.scanner.feed(self.detok.add(token))
        return self._split(text), hit

    def _split(self, text: str) -> ChatChunk | None:
        reasoning = ""
        if self.splitter is not None:
            text, reasoning = self.splitter.feed(text)
        return ChatChunk(text=text, reasoning=reasoning) if text or reasoning else None

    def last(self, reason: str, model: str, prompt_tokens: int, output_tokens: int) -> ChatChunk:
        """The stream's closing chunk: the held-back tail, finish reason and usage."""
        tail = "" if self.scanner.hit else self.scanner.flush(self.detok.flush())
        last = self._split(tail) or ChatChunk()
        if self.splitter is not None:
            rest_text, rest_reasoning = self.splitter.flush()
            last.text += rest_text
            last.reasoning += rest_reasoning
        last.finish_reason, last.model = reason, model
        last.usage = Usage(input_tokens=prompt_tokens, output_tokens=output_tokens)
        return last


def stream_plan(lm: HFModel, plan: Plan, model: str) -> Iterator[ChatChunk]:
    """Generate in a thread; decode, stop-scan and think-split token by token here."""
    streamer, cancel = TokenQueue(), threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["rows"] = generate(lm, [plan], streamer, cancel)
        except BaseException as exc:  # re-raised in the consumer
            outcome["error"] = exc
        finally:
            streamer.queue.put(_END)

    worker = threading.Thread(target=run, name="modelplug-hf-generate", daemon=True)
    worker.start()
    reader = TextReader(lm, plan)
    try:
        while True:
            token = streamer.queue.get()
            if token is _END or token in lm.eos_ids:
                break
            chunk, hit = reader.feed(token)
            if chunk is not None:
                yield chunk
            if hit:
                cancel.set()
                break
    finally:
        cancel.set()  # also when the consumer stops early: generate ends at its next step
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    (ids, reason), = outcome["rows"]
    yield reader.last(reason, model, len(plan.ids), len(ids))


def as_chunk(response: ChatResponse) -> ChatChunk:
    return ChatChunk(
        text=response.text, reasoning=response.reasoning,
        tool_calls=[ToolCallDelta(index=i, id=c.id, name=c.name, arguments=c.raw_arguments)
                    for i, c in enumerate(response.tool_calls)],
        usage=response.usage, finish_reason=response.finish_reason, model=response.model,
    )


__all__ = ["Detokenizer", "GrammarMask", "RowStops", "TextReader", "answer", "as_chunk", "finish",
           "generate", "stream_plan"]

"""The one constrained path of the in-process backends: structured output and forced tool calls.

A request's JSON schema (``response_format`` json_schema, JSON mode, or the tool-call shape of
:func:`modelplug.backends.tooling.output_schema`) becomes a token mask that both llama.cpp and
transformers apply at every step, so the answer is valid JSON for the schema by construction.

The engine is llguidance (MIT; the Rust grammar engine llama.cpp itself can be built with, and
one of vLLM's and SGLang's): its JSON-schema compiler covers RFC 8259 strings (no raw control
characters), required properties, enum/const, anyOf/oneOf/allOf, $ref/$defs, nested objects and
arrays with minItems/maxItems, integer and number bounds, additionalProperties, string
minLength/maxLength, pattern and common formats, and refuses any keyword it cannot enforce
instead of ignoring it. One engine for both backends gives them the same guarantees and the
same refusals (:class:`~modelplug.errors.UnsupportedSchemaError`, raised before generation).

Other parts of the path that live here, shared by both backends:

- whitespace: none between tokens of the JSON (compact separators), so a small model cannot pad
  its answer with newlines until the budget runs out;
- objects that name their properties and say nothing about others get
  ``additionalProperties: false`` (as OpenAI's strict mode and xgrammar do): still valid for the
  schema as given, and a model cannot wander off into keys of its own;
- :func:`schema_prompt`: the schema's fields and descriptions told to the model in the system
  message, so the grammar guides a model that knows what it is writing;
- :func:`output_bound`: the longest answer the grammar admits, when the schema bounds it, which
  is the default budget of a structured call (it then always finishes);
- :func:`check_finished`: a constrained answer cut by the budget raises
  :class:`~modelplug.errors.OutputTruncatedError` (naming max_tokens) in the adapters, instead
  of an incomplete object passing as an answer;
- reason, then constrain: for a model that thinks (``<think>`` tags), :func:`reasoning_start`
  says how its answer begins and :func:`compile_grammar` lets the reasoning run free inside the
  tags, up to a budget of tokens (``thinking_budget``), and constrains only the answer after
  them, so structured output does not switch thinking off (llama.cpp #15247 is that failure).
"""

from __future__ import annotations

import ctypes
import json
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any

from modelplug.backends.reasoning import CLOSE_TAG, OPEN_TAG
from modelplug.errors import (
    ConfigurationError,
    MissingDependencyError,
    OutputTruncatedError,
    UnsupportedSchemaError,
)

#: Separators of the generated JSON: one space after each, as ``json.dumps`` writes them.
ITEM_SEPARATOR, KEY_SEPARATOR = ", ", ": "
#: Any JSON object (JSON mode).
ANY_OBJECT: dict[str, Any] = {"type": "object"}
#: Keywords whose value is a schema, a list of schemas or a map of schemas (for the rewrite).
_SCHEMA_KEYS = ("items", "additionalProperties", "not", "if", "then", "else", "contains",
                "propertyNames", "unevaluatedProperties", "unevaluatedItems")
_LIST_KEYS = ("anyOf", "oneOf", "prefixItems")
_MAP_KEYS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")

#: Tokens a thinking model may reason for before a constrained answer, unless the model's setting
#: ``thinking_budget`` says otherwise.
DEFAULT_THINKING_BUDGET = 256
#: Most newlines between the closing ``</think>`` and the answer (models write one or two).
_GAP = 2

_compiled: dict[str, str] = {}
_compiled_lock = threading.Lock()


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as exc:
        raise MissingDependencyError(
            "Structured output and tool calls on in-process models use constrained decoding "
            "from llguidance, which is not installed. Install it with: "
            "pip install 'modelplug[llamacpp]' or 'modelplug[hf]' (or pip install llguidance).",
            name="llguidance") from exc
    return llguidance


def closed(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists its properties
    and says nothing about other keys (objects combined with ``allOf`` are left open: closing
    one part would forbid the other parts' properties)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out and not any(k in out for k in (
            "additionalProperties", "patternProperties", "unevaluatedProperties", "allOf")):
        out["additionalProperties"] = False
    for key in _SCHEMA_KEYS:
        if isinstance(out.get(key), dict):
            out[key] = closed(out[key])
    for key in _LIST_KEYS:
        if isinstance(out.get(key), list):
            out[key] = [closed(s) for s in out[key]]
    for key in _MAP_KEYS:
        if isinstance(out.get(key), dict):
            out[key] = {k: closed(s) for k, s in out[key].items()}
    return out


@dataclass(frozen=True)
class Reasoning:
    """How a thinking model's constrained answer begins: reasoning inside ``<think>`` tags,
    free text of at most ``budget`` tokens, then the answer under the grammar."""

    #: The prompt already opened the tag (a template ending in ``<think>``); else the model
    #: writes it, as the grammar's first token.
    opened: bool
    budget: int = DEFAULT_THINKING_BUDGET
    #: The tags are special tokens of the model's vocabulary (llguidance's ``<think>`` syntax),
    #: not text.
    special: bool = False

    @property
    def overhead(self) -> int:
        """The most tokens past ``budget`` that the tags and the gap before the answer take
        (every token writes at least a byte)."""
        return (0 if self.opened else len(OPEN_TAG)) + len(CLOSE_TAG) + _GAP


def thinking_budget(settings: dict[str, Any]) -> int:
    """The model's ``thinking_budget`` setting (tokens of reasoning before a constrained answer),
    checked; :data:`DEFAULT_THINKING_BUDGET` when it is not given."""
    value = settings.get("thinking_budget")
    if value is None:
        return DEFAULT_THINKING_BUDGET
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(
            f"thinking_budget must be a positive int (the most tokens a thinking model reasons "
            f"for before a structured answer); got {value!r}. Pass e.g. thinking_budget=512.")
    return value


def reasoning_start(request: Any, prompt: str, *, template: str, thinking: bool | None,
                    budget: int = DEFAULT_THINKING_BUDGET) -> Reasoning | None:
    """Whether a chat request's constrained answer is preceded by reasoning, and how it starts.

    ``prompt``: the rendered prompt; ``template``: the chat template; ``thinking``: the model is
    known to think (catalog, ``;thinking`` flag). None (no reasoning: the grammar starts at the
    answer) for a model that does not think, for ``reasoning=False``, and where the template
    already closed an empty ``<think></think>`` (Qwen3's ``enable_thinking=False``).
    """
    if request.reasoning is False:
        return None
    tail = prompt.rstrip()
    if tail.endswith(OPEN_TAG):
        return Reasoning(opened=True, budget=budget)
    if tail.endswith(CLOSE_TAG):
        return None
    if thinking or OPEN_TAG in template:
        return Reasoning(opened=False, budget=budget)
    return None


def within(reasoning: Reasoning, schema: dict[str, Any] | None, max_tokens: int | None, *,
           special: bool = False) -> Reasoning:
    """``reasoning`` fitted to a request's ``max_tokens`` (reasoning and answer together): the
    reasoning leaves room for the longest answer the schema admits, or for half the budget when
    the schema does not bound it. ``special``: the model's tags are special tokens."""
    budget = reasoning.budget
    if max_tokens:
        bound = output_bound(schema)
        room = (max_tokens - bound if bound is not None else max_tokens // 2) - reasoning.overhead
        budget = max(1, min(budget, room))
    return Reasoning(opened=reasoning.opened, budget=budget, special=special)


def default_budget(schema: dict[str, Any] | None, reasoning: Reasoning | None,
                   default: int) -> int:
    """The output budget of a structured call that sets no max_tokens: the schema's bound
    (:func:`output_bound`; ``default`` when it has none), plus the reasoning's own."""
    answer = output_bound(schema) or default
    return answer + (0 if reasoning is None else reasoning.budget + reasoning.overhead)


def special_tags(tokenizer: Any) -> bool:
    """Whether ``<think>`` is one special token of an llguidance tokenizer (then the grammar
    names it as a token: special tokens never match text)."""
    ids = tokenizer.tokenize_str(OPEN_TAG, parse_special=True)
    return len(ids) == 1 and bool(tokenizer.is_special_token(ids[0]))


def compile_schema(schema: dict[str, Any] | None) -> str:
    """The llguidance grammar for ``schema`` (None: any JSON object), checked and cached.

    A schema the engine cannot enforce exactly (an unknown keyword, a bad pattern, a ``$ref``
    outside the document) is an :class:`UnsupportedSchemaError` naming the problem.
    """
    return compile_grammar(schema)


def compile_grammar(schema: dict[str, Any] | None, reasoning: Reasoning | None = None) -> str:
    """:func:`compile_schema`'s grammar, preceded for a thinking model by its reasoning: any
    text (newlines too) inside the think tags, at most ``reasoning.budget`` tokens, then up to
    two newlines and the answer under the schema. Checked and cached."""
    if schema is None:
        schema = ANY_OBJECT
    if not isinstance(schema, dict):
        raise UnsupportedSchemaError(
            f"The JSON schema must be an object (a dict); got {schema!r}. Pass e.g. "
            "{'type': 'object', 'properties': {...}, 'required': [...]}.", keyword=None)
    key = json.dumps([schema, None if reasoning is None else
                      [reasoning.opened, reasoning.budget, reasoning.special]], sort_keys=True)
    with _compiled_lock:
        found = _compiled.get(key)
    if found is not None:
        return found
    llg = _llguidance()
    options = {"item_separator": ITEM_SEPARATOR, "key_separator": KEY_SEPARATOR,
               "whitespace_flexible": False, "lenient": False}
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(json.dumps(closed(schema)),
                                                        overrides=options)
    except (ValueError, TypeError) as exc:
        raise _refusal(str(exc)) from exc
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error or messages:  # a warning means some constraint would not be enforced
        raise _refusal("; ".join(messages))
    if reasoning is not None:
        grammar = _reasoning_grammar(llg, {**closed(schema), "x-guidance": options}, reasoning)
    with _compiled_lock:
        _compiled[key] = grammar
    return grammar


def _reasoning_grammar(llg: Any, schema: dict[str, Any], reasoning: Reasoning) -> str:
    """The lark grammar of reasoning, then the answer (the schema already checked alone).

    The reasoning is any text up to the first closing tag (a lazy lexeme), or, where the tags
    are special tokens, any text (which cannot contain them) and then the tag. Its budget is
    kept by :class:`Constraint`, which writes the closing tag once the budget is spent:
    llguidance's own ``max_tokens`` attribute ends a lazy lexeme without its closing tag, and
    a greedy one cannot end on a tag that its text could continue.
    """
    if reasoning.special:
        think, close_tag = "think: /(?s:.*)/", CLOSE_TAG
    else:
        closing = re.escape(CLOSE_TAG).replace("/", "\\/")
        think, close_tag = f"think[lazy]: /(?s:.*){closing}/", ""
    open_tag = "" if reasoning.opened else OPEN_TAG if reasoning.special else json.dumps(OPEN_TAG)
    lark = "\n".join([
        f"start: {open_tag} think {close_tag} answer",
        think,
        "answer: GAP? json",
        f"GAP: /\\n{{1,{_GAP}}}/",
        f"json: %json {json.dumps(schema)}",
    ])
    grammar = llg.LLMatcher.grammar_from_lark(lark)
    if not reasoning.special:  # special tokens are checked against a vocabulary (Constraint)
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
        if is_error or messages:
            raise _refusal("; ".join(messages))
    return grammar


def _refusal(detail: str) -> UnsupportedSchemaError:
    keyword = None
    if "Unimplemented keys: [" in detail:
        listed = detail.split("Unimplemented keys: [", 1)[1].split("]")[0]
        keyword = ", ".join(k.strip(' "\'') for k in listed.split(","))
    return UnsupportedSchemaError(
        f"The JSON schema cannot be enforced by the in-process grammar engine (llguidance): "
        f"{detail.strip()}. Remove or rewrite that part of the schema (describe the constraint "
        "in a field description instead), or use a model whose provider enforces it.",
        keyword=keyword)


class Constraint:
    """One request's grammar state: the tokens allowed next, and the tokens it has taken.

    With ``reasoning`` it also keeps the reasoning's budget: once the reasoning has taken
    ``reasoning.budget`` tokens without closing, the only tokens allowed are those of the
    closing tag, one by one (the grammar admits the tag at any point of the reasoning).
    """

    def __init__(self, tokenizer: Any, grammar: str, n_vocab: int,
                 reasoning: Reasoning | None = None) -> None:
        import numpy as np

        llg = _llguidance()
        self.matcher = llg.LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise _refusal(self.matcher.get_error())
        self.n_vocab = n_vocab
        self.words = np.zeros((n_vocab + 31) // 32, dtype=np.int32)
        self.tokenizer = tokenizer
        #: Reasoning tokens left before the closing tag is forced (None: not reasoning); the
        #: opening tag the model writes is not reasoning.
        self.thinking: int | None = None if reasoning is None else reasoning.budget + (
            0 if reasoning.opened else len(tokenizer.tokenize_str(
                OPEN_TAG, parse_special=reasoning.special)))
        #: The closing tag's tokens still to write, once forced.
        self.forced: list[int] = []
        self._recent = b""
        self._special = reasoning is not None and reasoning.special
        self._closing = [] if reasoning is None else tokenizer.tokenize_str(
            CLOSE_TAG, parse_special=self._special)

    def allowed(self) -> Any:
        """A bool array over the vocabulary: True where the grammar allows the token next."""
        import numpy as np

        self.fill(self.words.ctypes.data)
        bits = np.unpackbits(self.words.view(np.uint8), bitorder="little")
        return bits[: self.n_vocab].astype(bool)

    def fill(self, pointer: int) -> None:
        """Write the allowed-token bitmask (32 tokens per int32, little-endian bit order) at
        ``pointer``: ``(n_vocab + 31) // 32`` words."""
        size = self.words.size * 4
        if not self.forced:
            self.matcher.unsafe_compute_mask_ptr(pointer, size)
            return
        ctypes.memset(pointer, 0, size)
        token = self.forced[0]
        word = ctypes.c_uint32.from_address(pointer + 4 * (token // 32))
        word.value = 1 << (token % 32)

    def consume(self, token: int) -> bool:
        """Advance past a sampled token (always one the mask allowed, or the end token)."""
        if self.thinking is not None:
            self._count(token)
        return bool(self.matcher.consume_token(token))

    def _count(self, token: int) -> None:
        """Keep the reasoning's budget: the tag closes it; past the budget, force the tag."""
        if self.forced:
            self.forced.pop(0)
            if not self.forced:
                self.thinking = None
            return
        tail = self._recent + self.tokenizer.decode_bytes([token])
        self._recent = tail[-len(CLOSE_TAG) * 2:]
        if (token in self._closing) if self._special else CLOSE_TAG.encode() in tail:
            self.thinking = None
            return
        self.thinking -= 1  # type: ignore[operator]
        if self.thinking <= 0:
            self.forced = list(self._closing)


def llamacpp_tokenizer(llm: Any) -> Any:
    """llguidance's view of a loaded ``Llama``'s vocabulary (about a second: cache it)."""
    import llama_cpp

    _llguidance()
    from llguidance.llamacpp import lltokenizer_from_vocab

    vocab = llm._model.vocab
    eog = [t for t in range(llama_cpp.llama_vocab_n_tokens(vocab))
           if llama_cpp.llama_vocab_is_eog(vocab, t)]
    with warnings.catch_warnings():  # it calls a deprecated alias once per token
        warnings.simplefilter("ignore", DeprecationWarning)
        return lltokenizer_from_vocab(vocab, eos_token=eog or None)


def hf_tokenizer(tokenizer: Any, n_vocab: int, eos_ids: list[int]) -> Any:
    """llguidance's view of a transformers fast tokenizer (about a second: cache it)."""
    _llguidance()
    from llguidance.hf import from_tokenizer

    return from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=sorted(eos_ids) or None)


def mask_llamacpp_candidates(constraint: Constraint) -> Any:
    """A llama.cpp custom-sampler function: sets the logit of every token the grammar does not
    allow to -inf in the candidate array (``llama_token_data``: id, logit, p)."""
    import numpy as np

    dtype = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])

    def apply(cur_p: Any) -> None:
        array = cur_p.contents
        address = ctypes.cast(array.data, ctypes.c_void_p).value
        buffer = (ctypes.c_char * (array.size * dtype.itemsize)).from_address(address)
        data = np.frombuffer(buffer, dtype=dtype)
        allowed = constraint.allowed()
        data["logit"][~allowed[data["id"]]] = -np.inf

    return apply


def answer_schema(request: Any) -> dict[str, Any] | None:
    """The JSON schema a chat request's answer must follow, or None for free text: the
    tool-call shape when its tools take part, its json_schema, or any object for JSON mode."""
    from modelplug.backends import tooling

    if tooling.constrained(request):
        return tooling.output_schema(request)
    if request.json_schema is not None:
        return request.json_schema
    if (request.response_format or {}).get("type") == "json_object":
        return ANY_OBJECT
    return None


def instructed(request: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with the request's JSON schema told in the system message (json_schema
    requests; tool turns describe their tools instead)."""
    from modelplug.backends import tooling

    if request.json_schema is None or tooling.constrained(request):
        return messages
    return tooling.add_system(messages, schema_prompt(request.json_schema))


def mask_numpy_logits(constraint: Constraint) -> Any:
    """A llama-cpp-python logits processor (``create_chat_completion(logits_processor=)``):
    advances the grammar past the tokens sampled since its last call, then sets every token it
    does not allow to -inf."""
    import numpy as np

    seen: list[int] = []

    def process(input_ids: Any, scores: Any) -> Any:
        if not seen:  # the first call sees the prompt only
            seen.append(len(input_ids))
        for token in input_ids[seen[0]:]:
            constraint.consume(int(token))
        seen[0] = len(input_ids)
        scores[~constraint.allowed()[: len(scores)]] = -np.inf
        return scores

    return process


def torch_bitmask(rows: int, n_vocab: int) -> Any:
    """A bitmask tensor for ``rows`` constrained rows (:meth:`Constraint.fill` writes a row)."""
    import torch

    return torch.full((rows, (n_vocab + 31) // 32), -1, dtype=torch.int32)


def apply_torch_bitmask(scores: Any, bitmask: Any, indices: list[int]) -> None:
    """Set to -inf, in the rows ``indices`` of ``scores``, every token their mask disallows."""
    import torch

    words = bitmask[indices].to(scores.device)
    shifts = torch.arange(32, device=scores.device, dtype=torch.int32)
    allowed = ((words.unsqueeze(-1) >> shifts) & 1).flatten(1).bool()
    n = scores.shape[-1]
    if allowed.shape[1] < n:  # logits past the tokenizer's vocabulary are never allowed
        allowed = torch.nn.functional.pad(allowed, (0, n - allowed.shape[1]))
    rows = torch.tensor(indices, device=scores.device)
    scores[rows] = scores[rows].masked_fill(~allowed[:, :n], float("-inf"))


def schema_prompt(schema: dict[str, Any]) -> str:
    """A system-prompt section telling the model the JSON it must write (the schema, compact)."""
    shown = json.dumps(_without_titles(schema), separators=(",", ":"), ensure_ascii=False)
    return ("Answer with a JSON object only, filled in from the conversation, following this "
            f"JSON schema: {shown}")


def _without_titles(schema: Any) -> Any:
    """The schema without pydantic's ``title`` noise (a property titled like its name)."""
    if isinstance(schema, dict):
        return {k: _without_titles(v) for k, v in schema.items()
                if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_without_titles(v) for v in schema]
    return schema


def output_bound(schema: dict[str, Any] | None) -> int | None:
    """The most tokens an answer to ``schema`` can take under its grammar, or None when the
    schema leaves some part unbounded (a string without maxLength, an array without maxItems,
    a number without bounds...). Every token the grammar allows but the end writes at least
    one byte, so the byte length of the longest admitted JSON text bounds it."""
    if schema is None:
        return None
    return _bound(closed(schema), schema, 0)


def _bound(schema: Any, root: dict[str, Any], depth: int) -> int | None:
    if depth > 32 or not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/") or len(schema) > 1:
            return None
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return _bound(closed(target), root, depth + 1)
    if "const" in schema:
        return _literal(schema["const"])
    if "enum" in schema:
        return max((_literal(v) for v in schema["enum"]), default=None)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            bounds = [_bound(s, root, depth + 1) for s in schema[key]]
            return None if not bounds or None in bounds else max(b for b in bounds if b)
    kind = schema.get("type")
    if isinstance(kind, list) or kind is None or "allOf" in schema:
        return None
    if kind == "boolean":
        return 5
    if kind == "null":
        return 4
    if kind == "string":  # a pattern or format only narrows what maxLength allows
        if "maxLength" not in schema:
            return None
        return 2 + 6 * int(schema["maxLength"])  # an escaped character is at most \uXXXX
    if kind == "integer":  # a number's fraction digits are unbounded
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if low is None or high is None:
            return None
        return max(len(str(int(low))), len(str(int(high))))
    if kind == "array":
        if "maxItems" not in schema or "prefixItems" in schema:
            return None
        item = _bound(schema.get("items", {}), root, depth + 1) if schema["maxItems"] else 0
        if item is None:
            return None
        return 2 + int(schema["maxItems"]) * (item + len(ITEM_SEPARATOR))
    if kind == "object":
        if schema.get("additionalProperties", True) is not False:
            return None
        total = 2
        for name, sub in (schema.get("properties") or {}).items():
            value = _bound(sub, root, depth + 1)
            if value is None:
                return None
            total += _literal(name) + len(KEY_SEPARATOR) + value + len(ITEM_SEPARATOR)
        return total
    return None


def _literal(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=True))


def check_finished(text: str, finish_reason: str | None, max_tokens: int | None = None) -> None:
    """Raise :class:`OutputTruncatedError` when a structured answer was cut by the budget."""
    if finish_reason != "length":
        return
    budget = f"max_tokens={max_tokens}" if max_tokens else "the output budget (max_tokens)"
    raise OutputTruncatedError(
        f"The structured answer was cut short by {budget} (finish_reason='length'), so it is "
        f"incomplete JSON and is not returned as an answer: {text[:200]!r}. Raise max_tokens, "
        "or bound the schema's strings and arrays (maxLength, maxItems).",
        text=text, max_tokens=max_tokens)


__all__ = [
    "ANY_OBJECT",
    "DEFAULT_THINKING_BUDGET",
    "Constraint",
    "Reasoning",
    "answer_schema",
    "apply_torch_bitmask",
    "check_finished",
    "closed",
    "compile_grammar",
    "compile_schema",
    "default_budget",
    "hf_tokenizer",
    "instructed",
    "llamacpp_tokenizer",
    "mask_llamacpp_candidates",
    "mask_numpy_logits",
    "output_bound",
    "reasoning_start",
    "schema_prompt",
    "special_tags",
    "thinking_budget",
    "torch_bitmask",
    "within",
]

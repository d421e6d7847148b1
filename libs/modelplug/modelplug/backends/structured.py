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
  of an incomplete object passing as an answer.
"""

from __future__ import annotations

import ctypes
import json
import threading
import warnings
from typing import Any

from modelplug.errors import MissingDependencyError, OutputTruncatedError, UnsupportedSchemaError

#: Separators of the generated JSON: one space after each, as ``json.dumps`` writes them.
ITEM_SEPARATOR, KEY_SEPARATOR = ", ", ": "
#: Any JSON object (JSON mode).
ANY_OBJECT: dict[str, Any] = {"type": "object"}
#: Keywords whose value is a schema, a list of schemas or a map of schemas (for the rewrite).
_SCHEMA_KEYS = ("items", "additionalProperties", "not", "if", "then", "else", "contains",
                "propertyNames", "unevaluatedProperties", "unevaluatedItems")
_LIST_KEYS = ("anyOf", "oneOf", "prefixItems")
_MAP_KEYS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")

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


def compile_schema(schema: dict[str, Any] | None) -> str:
    """The llguidance grammar for ``schema`` (None: any JSON object), checked and cached.

    A schema the engine cannot enforce exactly (an unknown keyword, a bad pattern, a ``$ref``
    outside the document) is an :class:`UnsupportedSchemaError` naming the problem.
    """
    if schema is None:
        schema = ANY_OBJECT
    if not isinstance(schema, dict):
        raise UnsupportedSchemaError(
            f"The JSON schema must be an object (a dict); got {schema!r}. Pass e.g. "
            "{'type': 'object', 'properties': {...}, 'required': [...]}.", keyword=None)
    key = json.dumps(schema, sort_keys=True)
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
    with _compiled_lock:
        _compiled[key] = grammar
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
    """One request's grammar state: the tokens allowed next, and the tokens it has taken."""

    def __init__(self, tokenizer: Any, grammar: str, n_vocab: int) -> None:
        import numpy as np

        llg = _llguidance()
        self.matcher = llg.LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise _refusal(self.matcher.get_error())
        self.n_vocab = n_vocab
        self.words = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def allowed(self) -> Any:
        """A bool array over the vocabulary: True where the grammar allows the token next."""
        import numpy as np

        self.fill(self.words.ctypes.data)
        bits = np.unpackbits(self.words.view(np.uint8), bitorder="little")
        return bits[: self.n_vocab].astype(bool)

    def fill(self, pointer: int) -> None:
        """Write the allowed-token bitmask (32 tokens per int32, little-endian bit order) at
        ``pointer``: ``(n_vocab + 31) // 32`` words."""
        self.matcher.unsafe_compute_mask_ptr(pointer, self.words.size * 4)

    def consume(self, token: int) -> bool:
        """Advance past a sampled token (always one the mask allowed, or the end token)."""
        return bool(self.matcher.consume_token(token))


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
    "Constraint",
    "answer_schema",
    "apply_torch_bitmask",
    "check_finished",
    "closed",
    "compile_schema",
    "hf_tokenizer",
    "instructed",
    "llamacpp_tokenizer",
    "mask_llamacpp_candidates",
    "mask_numpy_logits",
    "output_bound",
    "schema_prompt",
    "torch_bitmask",
]

"""Constrained output is valid for every schema, or refused up front (both in-process backends).

Hypothesis builds JSON schemas of the kinds structured output promises (strings with lengths,
patterns and formats, integers and numbers with bounds, enum/const, nested objects and arrays,
anyOf, disjoint oneOf, $ref/$defs, optional properties), sometimes with a keyword the engine
cannot enforce. SmolLM2 answers each one on llama.cpp and on transformers, sampled (temperature
1, a drawn seed) so that the grammar, not the model's habits, is what is tested. Each answer:

- refused before generation with UnsupportedSchemaError, exactly when the schema has a keyword
  the engine refuses (never a silently looser grammar, never a refusal of a supported schema);
- else valid for the schema as given (``jsonschema``), or cut by the budget only when the schema
  leaves its length unbounded (a schema that bounds it gets that bound as its default budget,
  so it always finishes).

And the converse, without the model: every valid instance hypothesis draws for a (supported,
format-free) schema, written as the grammar writes JSON, is accepted by the grammar,
so the mask never forbids a valid answer.

And for thinking models (reason, then constrain), without the model: any reasoning that does
not close itself, then the closing tag, up to two newlines and a valid answer, is admitted by
the reasoning grammar (the model writes the opening tag, or the template already did); and
reasoning that runs past its budget is closed by the constraint, which then allows only the
closing tag's tokens, with the tags as text (SmolLM2) or as special tokens of the vocabulary.

The normal run is a small fixed sample (``derandomize``). ``make conformance`` runs a few
hundred random schemas (MODELPLUG_CONFORMANCE_EXAMPLES) and writes the counts to
MODELPLUG_CONFORMANCE_REPORT.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from modelplug import ChatRequest, create_backend
from modelplug.backends import structured
from modelplug.backends.structured import output_bound
from modelplug.errors import UnsupportedSchemaError

EXAMPLES = int(os.environ.get("MODELPLUG_CONFORMANCE_EXAMPLES", "6"))
FULL = "MODELPLUG_CONFORMANCE_EXAMPLES" in os.environ
REPORT = os.environ.get("MODELPLUG_CONFORMANCE_REPORT")
#: The budget of a schema that leaves its length unbounded (its answer may be cut).
UNBOUNDED_MAX_TOKENS = 48
#: Keywords the engine refuses; a schema with one must be refused, never loosened.
REFUSED = ("uniqueItems", "not", "if", "dependentRequired")
NAMES = ["name", "age", "city", "ok", "tags", "x", "note"]
PATTERNS = ["^[a-z]+$", "^[A-Z][a-z]*$", "^[0-9]{2,4}$", "^(yes|no)$"]
FORMATS = ["date", "time", "email", "uuid"]

integers = st.integers(-1000, 1000)
literals = st.one_of(st.text(alphabet="abcxyz ", max_size=5), integers, st.booleans(),
                     st.none())


@st.composite
def strings(draw: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if draw(st.booleans()):
        schema["maxLength"] = draw(st.integers(1, 12))
        if draw(st.booleans()):
            schema["minLength"] = draw(st.integers(0, schema["maxLength"]))
    # Patterns and formats without lengths: a length no match can have makes the schema
    # unsatisfiable, which llguidance refuses as such.
    kind = draw(st.sampled_from(["plain", "pattern", "format"]))
    if kind == "pattern" and "maxLength" not in schema:
        schema["pattern"] = draw(st.sampled_from(PATTERNS))
    elif kind == "format" and "maxLength" not in schema:
        schema["format"] = draw(st.sampled_from(FORMATS))
    return schema


@st.composite
def numbers(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["integer", "number"]))
    low = draw(integers)
    high = low + draw(st.integers(0 if kind == "integer" else 1, 500))
    schema: dict[str, Any] = {"type": kind}
    if draw(st.booleans()):
        schema["minimum"], schema["maximum"] = low, high
    elif draw(st.booleans()):
        schema["exclusiveMinimum"], schema["exclusiveMaximum"] = low - 1, high + 1
    if kind == "integer" and draw(st.booleans()):
        schema["multipleOf"] = draw(st.integers(1, 5))
        schema.setdefault("minimum", low)
        schema.setdefault("maximum", high + 5)
    return schema


leaves = st.one_of(
    strings(), numbers(), st.just({"type": "boolean"}), st.just({"type": "null"}),
    st.lists(literals, min_size=1, max_size=3, unique_by=json.dumps).map(lambda v: {"enum": v}),
    literals.map(lambda v: {"const": v}),
)


@st.composite
def objects(draw: Any, children: Any) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    properties = {n: draw(children) for n in names}
    required = [n for n in names if draw(st.booleans())]
    schema = {"type": "object", "properties": properties, "required": required}
    if draw(st.booleans()):
        schema["additionalProperties"] = False
    return schema


@st.composite
def arrays(draw: Any, children: Any) -> dict[str, Any]:
    top = draw(st.integers(0, 3))
    schema = {"type": "array", "items": draw(children), "maxItems": top,
              "minItems": draw(st.integers(0, top))}
    return schema


def extend(children: Any) -> Any:
    return st.one_of(
        objects(children),
        arrays(children),
        st.lists(children, min_size=2, max_size=3).map(lambda s: {"anyOf": s}),
        st.tuples(strings(), numbers()).map(lambda s: {"oneOf": list(s)}),  # disjoint types
        children.map(lambda s: {"type": [s["type"], "null"], **{k: v for k, v in s.items()
                                                                 if k != "type"}}
                     if isinstance(s.get("type"), str) and s["type"] != "null" else s),
    )


@st.composite
def schemas(draw: Any) -> dict[str, Any]:
    """A root object (as structured output asks for), its parts drawn recursively; sometimes a
    part behind $defs/$ref, sometimes a keyword the engine refuses."""
    parts = st.recursive(leaves, extend, max_leaves=5)
    schema = draw(objects(parts))
    if draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(NAMES))
        schema["$defs"] = {"Part": draw(parts)}
        schema["properties"][name] = {"$ref": "#/$defs/Part"}
    if draw(st.integers(0, 5)) == 3:  # about one in six (hypothesis favours 0)
        keyword = draw(st.sampled_from(REFUSED))
        schema["properties"]["bad"] = {
            "uniqueItems": {"type": "array", "items": {"type": "integer"}, "maxItems": 2,
                            "uniqueItems": True},
            "not": {"not": {"type": "string"}},
            "if": {"if": {"type": "string"}, "then": {"maxLength": 3}},
            "dependentRequired": {"type": "object", "dependentRequired": {"a": ["b"]}},
        }[keyword]
    return schema


def refused_keyword(schema: Any) -> bool:
    """Whether ``schema`` uses a keyword of REFUSED as a keyword (not as a property name)."""
    if isinstance(schema, list):
        return any(refused_keyword(s) for s in schema)
    if not isinstance(schema, dict):
        return False
    if any(k in schema for k in REFUSED):
        return True
    return any(refused_keyword(v) for k, v in schema.items()
               if k not in ("properties", "$defs", "const", "enum")) \
        or any(refused_keyword(v) for k in ("properties", "$defs")
               for v in (schema.get(k) or {}).values())


OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module", params=["llamacpp", "hf"])
def backend(request: pytest.FixtureRequest, smollm2_path: Path) -> Any:
    if request.param == "llamacpp":
        return create_backend("llamacpp:smollm2")
    import torch

    torch.set_num_threads(1)
    folder = request.getfixturevalue("smollm2_hf_path")
    return create_backend(f"hf:{folder}")


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    yield
    if REPORT:
        import datetime

        lines = ["# Structured-output conformance", "",
                 f"Run of {datetime.date.today()}: {EXAMPLES} generated schemas per backend "
                 "(`make conformance`), SmolLM2-135M at temperature 1. Every answer either "
                 "validated (jsonschema), was cut by its budget (only schemas that leave their "
                 "length unbounded, max_tokens 48), or was refused up front "
                 "(UnsupportedSchemaError, exactly the schemas with a refused keyword).", "",
                 "| backend | answers validated | cut by budget (unbounded schema) | "
                 "refused up front | total |", "|---|---|---|---|---|"]
        for name, counts in sorted(OUTCOMES.items()):
            lines.append(f"| {name} | {counts['valid']} | {counts['cut']} | "
                         f"{counts['refused']} | {sum(counts.values())} |")
        Path(REPORT).write_text("\n".join(lines) + "\n", encoding="utf-8")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not FULL, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(schema=schemas(), seed=st.integers(0, 2**31 - 1))
def test_constrained_output_validates_or_is_refused(backend: Any, schema: dict[str, Any],
                                                    seed: int) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    bound = output_bound(schema)
    request = ChatRequest(
        messages=[{"role": "user", "content": "Fill in the form with an example."}],
        response_format={"type": "json_schema", "json_schema": {"name": "form",
                                                                "schema": schema}},
        temperature=1.0, seed=seed, max_tokens=None if bound else UNBOUNDED_MAX_TOKENS)
    outcomes = OUTCOMES[backend.spec.key]
    try:
        backend.check(request)
    except UnsupportedSchemaError:
        assert refused_keyword(schema), f"a supported schema was refused: {schema}"
        outcomes["refused"] += 1
        return
    assert not refused_keyword(schema), f"an unenforceable keyword was accepted: {schema}"
    response = backend.chat(request)
    if response.finish_reason == "length":
        assert bound is None, (f"a schema bounded to {bound} tokens was cut by its default "
                               f"budget: {schema} -> {response.text!r}")
        outcomes["cut"] += 1
        return
    jsonschema.validate(json.loads(response.text), schema)
    outcomes["valid"] += 1


@pytest.fixture(scope="module")
def vocabulary(smollm2_path: Path) -> Any:
    """llguidance's view of SmolLM2's llama.cpp vocabulary (no weights loaded)."""
    from llama_cpp import Llama

    llm = Llama(str(smollm2_path), vocab_only=True, verbose=False)
    yield structured.llamacpp_tokenizer(llm)  # it tokenizes through llm's vocabulary
    llm.close()


def written(value: Any, schema: Any, root: dict[str, Any]) -> str:
    """``value`` as the grammar writes JSON: its separators, properties in the schema's order."""
    if isinstance(schema, dict) and "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    for key in ("anyOf", "oneOf"):
        for branch in (schema or {}).get(key, []):
            if jsonschema.Draft202012Validator(dict(branch, **{"$defs": root.get("$defs", {})})) \
                    .is_valid(value):
                return written(value, branch, root)
    if isinstance(value, dict):
        order = list((schema or {}).get("properties", {}))
        keys = sorted(value, key=lambda k: order.index(k) if k in order else len(order))
        parts = (f"{json.dumps(k)}: {written(value[k], schema['properties'][k], root)}"
                 for k in keys)
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, list):
        item = (schema or {}).get("items", {})
        return "[" + ", ".join(written(v, item, root) for v in value) + "]"
    if isinstance(value, float):  # llguidance's bounded numbers take no exponent (1e-05),
        # and no negative zero ("-0", "-0.0"): the same value is written as 0
        return f"{value + 0.0:.20f}".rstrip("0").removesuffix(".") or "0"
    # llguidance (like llama.cpp's own grammar) wants DEL escaped, as \u007f.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def instances(schema: Any, root: dict[str, Any]) -> Any:
    """A strategy for the valid instances of the schemas :func:`schemas` builds.

    (hypothesis-jsonschema's ``from_schema`` would do this, but 0.23.1 fails on any object
    schema with current hypothesis: ``'many' object has no attribute 'more'``.)
    """
    if "$ref" in schema:
        return instances(root["$defs"][schema["$ref"].rsplit("/", 1)[1]], root)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([instances(s, root) for s in schema[key]])
    kind = schema["type"]
    if isinstance(kind, list):
        return st.one_of([instances({**schema, "type": k}, root) for k in kind])
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if "pattern" in schema:
            return st.from_regex(schema["pattern"].strip("^$"), fullmatch=True).filter(
                lambda v: low <= len(v) <= (high if high is not None else len(v)))
        # Assigned characters: llguidance refuses unassigned code points past plane 3.
        return st.text(st.characters(exclude_categories=("Cn", "Cs")), min_size=low,
                       max_size=high)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if kind == "number":
            return st.floats(low, high, allow_nan=False, allow_infinity=False,
                             exclude_min="exclusiveMinimum" in schema,
                             exclude_max="exclusiveMaximum" in schema)
        step = schema.get("multipleOf", 1)
        low = None if low is None else low + ("exclusiveMinimum" in schema)
        high = None if high is None else high - ("exclusiveMaximum" in schema)
        first = None if low is None else -(-low // step)
        last = None if high is None else high // step
        if first is not None and last is not None and first > last:
            return st.nothing()  # no multiple of step in range: an unsatisfiable schema
        return st.integers(first, last).map(lambda v: v * step)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(instances(schema.get("items", {}), root),
                        min_size=schema.get("minItems", 0), max_size=schema.get("maxItems"))
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    return st.fixed_dictionaries(
        {k: instances(v, root) for k, v in properties.items() if k in required},
        optional={k: instances(v, root) for k, v in properties.items() if k not in required})


@settings(max_examples=max(50, EXAMPLES), deadline=None, derandomize=not FULL, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much])
@given(data=st.data(), schema=schemas().filter(
    lambda s: not refused_keyword(s) and '"format"' not in json.dumps(s)))
def test_every_valid_instance_is_admitted_by_the_grammar(vocabulary: Any, data: Any,
                                                         schema: dict[str, Any]) -> None:
    import llguidance

    instance = data.draw(instances(schema, schema), label="instance")
    assume(jsonschema.Draft202012Validator(schema).is_valid(instance))
    assume(not any(s.endswith("\n") for s in _strings(instance)))  # Python's $ admits one
    text = written(instance, structured.closed(schema), structured.closed(schema))
    matcher = llguidance.LLMatcher(vocabulary, structured.compile_schema(schema), log_level=0)
    tokens = vocabulary.tokenize_str(text)
    taken = matcher.try_consume_tokens(tokens)
    assert taken == len(tokens) and matcher.is_accepting(), \
        f"the grammar refused a valid answer at token {taken}: {text!r} for {schema}"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)] + list(value)
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


# -- reason, then constrain --------------------------------------------------------------------

#: Reasoning text: any assigned characters, newlines included, never the closing tag itself.
reasonings = st.text(st.characters(exclude_categories=("Cn", "Cs")), max_size=40).filter(
    lambda t: structured.CLOSE_TAG not in t)


@settings(max_examples=max(50, EXAMPLES), deadline=None, derandomize=not FULL, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much])
@given(data=st.data(), schema=schemas().filter(
    lambda s: not refused_keyword(s) and '"format"' not in json.dumps(s)),
    reasoning=reasonings, opened=st.booleans(), gap=st.sampled_from(["", "\n", "\n\n"]))
def test_reasoning_then_every_valid_answer_is_admitted(vocabulary: Any, data: Any,
                                                       schema: dict[str, Any], reasoning: str,
                                                       opened: bool, gap: str) -> None:
    import llguidance

    instance = data.draw(instances(schema, schema), label="instance")
    assume(jsonschema.Draft202012Validator(schema).is_valid(instance))
    assume(not any(s.endswith("\n") for s in _strings(instance)))
    answer = written(instance, structured.closed(schema), structured.closed(schema))
    text = ("" if opened else structured.OPEN_TAG) + reasoning + structured.CLOSE_TAG + gap + \
        answer
    grammar = structured.compile_grammar(schema, structured.Reasoning(opened, budget=10_000))
    matcher = llguidance.LLMatcher(vocabulary, grammar, log_level=0)
    tokens = vocabulary.tokenize_str(text)
    taken = matcher.try_consume_tokens(tokens)
    assert taken == len(tokens) and matcher.is_accepting(), \
        f"the reasoning grammar refused a valid answer at token {taken}: {text!r} for {schema}"


@pytest.fixture(scope="module")
def special_vocabulary(smollm2_hf_path: Path) -> Any:
    """llguidance's view of SmolLM2's tokenizer with ``<think>`` and ``</think>`` added as
    special tokens, as thinking models' vocabularies may have them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_path)
    tokenizer.add_special_tokens({"additional_special_tokens": [structured.OPEN_TAG,
                                                                structured.CLOSE_TAG]})
    return structured.hf_tokenizer(tokenizer, len(tokenizer), [tokenizer.eos_token_id])


BOUNDED = {"type": "object", "required": ["n"], "properties": {
    "n": {"type": "integer", "minimum": 1, "maximum": 9}}}


@settings(max_examples=max(30, EXAMPLES), deadline=None, derandomize=not FULL, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(["a", " think", " about", " it", "\n", " 42", "<", "/"]),
                      min_size=1, max_size=30),
       budget=st.integers(1, 12), opened=st.booleans(), special=st.booleans())
def test_reasoning_past_its_budget_is_closed(vocabulary: Any, special_vocabulary: Any,
                                             words: list[str], budget: int, opened: bool,
                                             special: bool) -> None:
    """Reasoning tokens are taken until the budget is spent; then the only tokens allowed are
    the closing tag's, one by one, and the answer follows under the schema."""
    vocab = special_vocabulary if special else vocabulary
    assert structured.special_tags(vocab) is special
    reasoning = structured.Reasoning(opened, budget=budget, special=special)
    constraint = structured.Constraint(
        vocab, structured.compile_grammar(BOUNDED, reasoning), vocab.vocab_size, reasoning)
    opening = [] if opened else vocab.tokenize_str(structured.OPEN_TAG, parse_special=special)
    for token in opening:
        assert constraint.allowed()[token]
        constraint.consume(token)
    taken = 0
    for token in vocab.tokenize_str("".join(words)):
        if taken == budget:
            break
        assert constraint.allowed()[token]
        constraint.consume(token)
        taken += 1
    closing = vocab.tokenize_str(structured.CLOSE_TAG, parse_special=special)
    if taken < budget:  # it closes itself within the budget
        assert all(constraint.allowed()[t] for t in closing[:1])
    else:
        for token in closing:
            allowed = constraint.allowed().nonzero()[0].tolist()
            assert allowed == [token], "past its budget only the closing tag is allowed"
            constraint.consume(token)
        assert constraint.thinking is None
    if taken == budget:
        for token in vocab.tokenize_str('{"n": 7}'):
            assert constraint.allowed()[token]
            constraint.consume(token)
        assert constraint.matcher.is_accepting()

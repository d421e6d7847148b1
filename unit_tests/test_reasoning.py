"""The <think> tag splitter: reasoning out of the answer, whole or streamed in any pieces; and
where a thinking model's constrained answer starts, with its reasoning budget."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelplug.backends import structured
from modelplug.backends.reasoning import ThinkTagSplitter, split_think_tags
from modelplug.errors import ConfigurationError

ANSWER = "<think>\nThe user asks 2+2. That is 4.\n</think>\n\nThe answer is 4."


def _stream(pieces: list[str], *, implicit_open: bool = False) -> tuple[str, str, list]:
    """Feed pieces; return the joined text, joined reasoning and the (text, reasoning) events."""
    splitter = ThinkTagSplitter(implicit_open=implicit_open)
    events = [splitter.feed(p) for p in pieces] + [splitter.flush()]
    return "".join(t for t, _ in events), "".join(r for _, r in events), events


def _every_split(text: str) -> list[list[str]]:
    """The text cut at every single position and into single characters."""
    cuts = [[text[:i], text[i:]] for i in range(len(text) + 1)]
    return [*cuts, list(text)]


def test_whole_answer_with_tags() -> None:
    assert split_think_tags(ANSWER) == ("The answer is 4.", "The user asks 2+2. That is 4.")


def test_text_without_tags_is_untouched() -> None:
    assert split_think_tags("  Plain answer, no thinking.\n") == (
        "  Plain answer, no thinking.\n", "")


def test_template_opened_think_whole_answer() -> None:
    # The chat template ended the prompt with "<think>\n": only the closing tag is in the output.
    assert split_think_tags("Let me think. 2+2=4.\n</think>\n\nIt is 4.") == (
        "It is 4.", "Let me think. 2+2=4.")


@pytest.mark.parametrize("pieces", _every_split(ANSWER))
def test_stream_split_anywhere(pieces: list[str]) -> None:
    text, reasoning, _ = _stream(pieces)
    assert text == "The answer is 4."
    assert reasoning.strip() == "The user asks 2+2. That is 4."


def test_stream_emits_reasoning_live_and_never_tag_text() -> None:
    pieces = ["<th", "ink>", "step one, ", "step two", "</thi", "nk>", "Done", "."]
    _, _, events = _stream(pieces)
    assert ("", "step one, ") in events  # reasoning is streamed as it arrives
    for text, reasoning in events:
        assert "<" not in text and "<" not in reasoning
    assert "".join(t for t, _ in events) == "Done."


def test_stream_holds_only_a_possible_tag_prefix() -> None:
    splitter = ThinkTagSplitter()
    assert splitter.feed("Hello <") == ("Hello ", "")  # "<" may start a tag: held
    assert splitter.feed("b>world") == ("<b>world", "")  # it did not
    assert splitter.flush() == ("", "")


@pytest.mark.parametrize("pieces", _every_split("Reasoning first.</think>The answer."))
def test_stream_template_opened_think(pieces: list[str]) -> None:
    text, reasoning, _ = _stream(pieces, implicit_open=True)
    assert (text, reasoning) == ("The answer.", "Reasoning first.")


def test_implicit_mode_without_any_tag_is_all_text() -> None:
    # The price of implicit mode, which is why backends use it only for models whose template
    # opens <think> in the prompt: text that might be reasoning is held until something decides.
    text, reasoning, events = _stream(["No ", "thinking ", "here."], implicit_open=True)
    assert (text, reasoning) == ("No thinking here.", "")
    assert events[-1] == ("No thinking here.", "")  # held until the end decided it


def test_settle_as_text_releases_held_text_and_then_streams() -> None:
    splitter = ThinkTagSplitter(implicit_open=True)
    assert splitter.feed("Held ") == ("", "")
    splitter.settle_as_text()  # e.g. the server sent reasoning in a field of its own
    assert splitter.feed("then") == ("Held then", "")
    assert splitter.feed(" live.") == (" live.", "")
    assert splitter.flush() == ("", "")


def test_without_implicit_mode_text_streams_at_once() -> None:
    _, _, events = _stream(["One ", "two ", "three."])
    assert events[:3] == [("One ", ""), ("two ", ""), ("three.", "")]


def test_implicit_mode_with_explicit_open_tag_streams_reasoning() -> None:
    text, reasoning, events = _stream(["<think>", "a", "b", "</think>", "c"], implicit_open=True)
    assert (text, reasoning) == ("c", "ab")
    assert ("", "a") in events


def test_unclosed_thinking_is_reasoning() -> None:
    # max_tokens cut the model off mid-thought: nothing of it is the answer.
    text, reasoning, _ = _stream(["<think>I was thinking ab", "out"])
    assert (text, reasoning) == ("", "I was thinking about")


def test_stray_closing_tag_is_dropped_from_streamed_text() -> None:
    text, reasoning, _ = _stream(["Answer", "</think>", " more"])
    assert (text, reasoning) == ("Answer more", "")


# -- reason, then constrain: where a constrained answer's reasoning starts, and its budget ------

QWEN3_LIKE = "{% if enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
PLAIN = "{{ '<|im_start|>assistant\n' }}"
BOUNDED = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1,
                                                  "maximum": 9}}, "required": ["n"]}


def _request(reasoning: bool | None = None) -> SimpleNamespace:
    return SimpleNamespace(reasoning=reasoning)


def test_a_template_that_opened_think_starts_the_answer_inside_it() -> None:
    start = structured.reasoning_start(_request(), "<|im_start|>assistant\n<think>\n",
                                       template=PLAIN, thinking=None, budget=40)
    assert start == structured.Reasoning(opened=True, budget=40)


def test_a_thinking_model_opens_its_own_tag() -> None:
    for template, thinking in ((QWEN3_LIKE, None), (PLAIN, True)):
        start = structured.reasoning_start(_request(), "<|im_start|>assistant\n",
                                           template=template, thinking=thinking)
        assert start == structured.Reasoning(opened=False)


def test_no_reasoning_for_models_that_do_not_think_or_when_it_is_switched_off() -> None:
    prompt = "<|im_start|>assistant\n"
    assert structured.reasoning_start(_request(), prompt, template=PLAIN, thinking=None) is None
    assert structured.reasoning_start(_request(False), prompt + "<think>\n", template=QWEN3_LIKE,
                                      thinking=True) is None
    # Qwen3's enable_thinking=False: the template closed an empty block in the prompt
    assert structured.reasoning_start(_request(), prompt + "<think>\n\n</think>\n\n",
                                      template=QWEN3_LIKE, thinking=True) is None


@given(budget=st.integers(1, 10_000), max_tokens=st.integers(1, 10_000),
       opened=st.booleans())
def test_reasoning_fitted_to_max_tokens_leaves_room_for_a_bounded_answer(
        budget: int, max_tokens: int, opened: bool) -> None:
    fitted = structured.within(structured.Reasoning(opened, budget), BOUNDED, max_tokens)
    assert 1 <= fitted.budget <= budget
    room = max_tokens - structured.output_bound(BOUNDED) - fitted.overhead
    assert fitted.budget == budget or fitted.budget == max(1, room)
    if room >= 1:  # reasoning and the longest answer fit the request's budget together
        assert fitted.budget + fitted.overhead + structured.output_bound(BOUNDED) <= max_tokens


@given(budget=st.integers(1, 10_000), max_tokens=st.integers(4 * 17, 10_000))
def test_reasoning_takes_at_most_half_of_max_tokens_when_the_answer_is_unbounded(
        budget: int, max_tokens: int) -> None:
    fitted = structured.within(structured.Reasoning(True, budget), {"type": "object"},
                               max_tokens)
    assert fitted.budget + fitted.overhead <= max_tokens // 2 or fitted.budget == budget


def test_the_default_budget_adds_the_reasonings_own() -> None:
    reasoning = structured.Reasoning(opened=False, budget=100)
    bound = structured.output_bound(BOUNDED)
    assert structured.default_budget(BOUNDED, None, 512) == bound
    assert structured.default_budget(BOUNDED, reasoning, 512) == bound + 100 + \
        len("<think>") + len("</think>") + 2
    assert structured.default_budget({"type": "object"}, reasoning, 512) == 512 + \
        reasoning.budget + reasoning.overhead


@pytest.mark.parametrize("bad", [0, -5, 1.5, "256", True])
def test_a_bad_thinking_budget_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=f"thinking_budget.*{bad!r}"):
        structured.thinking_budget({"thinking_budget": bad})
    assert structured.thinking_budget({}) == structured.DEFAULT_THINKING_BUDGET

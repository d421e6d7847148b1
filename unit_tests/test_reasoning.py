"""The <think> tag splitter: reasoning out of the answer, whole or streamed in any pieces."""

from __future__ import annotations

import pytest

from modelplug.backends.reasoning import ThinkTagSplitter, split_think_tags

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

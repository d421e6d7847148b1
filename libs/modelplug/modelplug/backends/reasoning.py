"""Reasoning written as ``<think>...</think>`` tags inside the answer text, split out of it.

Servers without a reasoning parser (and models served raw) return a thinking model's scratchpad
inline. :class:`ThinkTagSplitter` is a small streaming state machine that routes it to the
reasoning channel: tags may be split across chunks at any character, and a chat template that
already opened ``<think>`` in the prompt makes the output start inside the thinking, with only a
closing tag to show for it. Any backend that sees raw model text can reuse it.
"""

from __future__ import annotations

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

# States of the splitter.
_TEXT = "text"  # answer text; an opening tag switches to _THINK
_THINK = "think"  # inside the scratchpad; a closing tag switches to _TEXT
_UNDECIDED = "undecided"  # output may have started inside thinking: hold it until a tag decides


def _partial_tag_len(buf: str, *tags: str) -> int:
    """Length of the longest tail of ``buf`` that is a proper prefix of one of ``tags``."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(buf)), best, -1):
            if buf.endswith(tag[:n]):
                best = n
                break
    return best


class ThinkTagSplitter:
    """Feed raw text deltas; get back ``(text, reasoning)`` parts safe to emit now.

    ``implicit_open=True`` is for output that may begin inside thinking (the template opened the
    tag in the prompt): use it only for models known to do that, since nothing is emitted until
    it is decided. A ``</think>`` makes everything before it reasoning; an explicit ``<think>``
    first means the model opens its own tags; :meth:`settle_as_text` (the server split the
    reasoning out) or the end of the output without either means there was no thinking, and it
    is all text. Reasoning is therefore not streamed live in that mode, but it never leaks into
    the answer.

    Without ``implicit_open`` text streams at once; a stray ``</think>`` is dropped.
    """

    def __init__(self, *, implicit_open: bool = False, open_tag: str = OPEN_TAG,
                 close_tag: str = CLOSE_TAG) -> None:
        self.open_tag = open_tag
        self.close_tag = close_tag
        self._state = _UNDECIDED if implicit_open else _TEXT
        self._buf = ""
        #: Whether any text has been emitted (leading whitespace before a tag is not text).
        self._text_started = False
        #: Strip whitespace at the start of the next text / reasoning segment (after a tag).
        self._lstrip_text = False
        self._lstrip_reasoning = False

    @property
    def in_thinking(self) -> bool:
        return self._state == _THINK

    def settle_as_text(self) -> None:
        """The output did not start inside thinking (e.g. the server sends reasoning in a field
        of its own): an undecided start is text, emitted by the next :meth:`feed`."""
        if self._state == _UNDECIDED:
            self._state = _TEXT

    def feed(self, delta: str) -> tuple[str, str]:
        self._buf += delta
        text: list[str] = []
        reasoning: list[str] = []
        while self._buf:
            if self._state == _THINK:
                i = self._buf.find(self.close_tag)
                if i >= 0:
                    reasoning.append(self._reasoning_part(self._buf[:i]))
                    self._buf = self._buf[i + len(self.close_tag):]
                    self._state, self._lstrip_text = _TEXT, True
                    continue
                keep = _partial_tag_len(self._buf, self.close_tag)
                reasoning.append(self._reasoning_part(self._buf[:len(self._buf) - keep]))
                self._buf = self._buf[len(self._buf) - keep:]
                break
            if self._state == _UNDECIDED:
                i_open = self._buf.find(self.open_tag)
                i_close = self._buf.find(self.close_tag)
                if i_open >= 0 and (i_close < 0 or i_open < i_close) \
                        and not self._buf[:i_open].strip():
                    self._buf = self._buf[i_open + len(self.open_tag):]
                    self._state, self._lstrip_reasoning = _THINK, True
                    continue
                if i_close >= 0:
                    reasoning.append(self._reasoning_part(self._buf[:i_close].lstrip()))
                    self._buf = self._buf[i_close + len(self.close_tag):]
                    self._state, self._lstrip_text = _TEXT, True
                    continue
                break  # hold everything until a tag or the end decides
            # _TEXT
            if self._lstrip_text:
                self._buf = self._buf.lstrip()
                if not self._buf:
                    break
                self._lstrip_text = False
            i_open = self._buf.find(self.open_tag)
            i_close = self._buf.find(self.close_tag)
            if i_open >= 0 and (i_close < 0 or i_open < i_close):
                self._text_part(self._buf[:i_open], text)
                self._buf = self._buf[i_open + len(self.open_tag):]
                self._state, self._lstrip_reasoning = _THINK, True
                continue
            if i_close >= 0:  # a closing tag with nothing open: not part of the answer
                self._text_part(self._buf[:i_close], text)
                self._buf = self._buf[i_close + len(self.close_tag):]
                self._lstrip_text = not self._text_started
                continue
            if not self._text_started and not self._buf.strip():
                break  # whitespace only so far: it may just precede an opening tag
            keep = _partial_tag_len(self._buf, self.open_tag, self.close_tag)
            self._text_part(self._buf[:len(self._buf) - keep], text)
            self._buf = self._buf[len(self._buf) - keep:]
            break
        return "".join(text), "".join(reasoning)

    def flush(self) -> tuple[str, str]:
        """The held-back rest at the end of the output."""
        buf, self._buf = self._buf, ""
        if self._state == _THINK:  # thinking never closed (e.g. cut by max_tokens)
            return "", self._reasoning_part(buf)
        if self._state == _UNDECIDED:  # no tag at all: there was no thinking
            self._state = _TEXT
        if self._lstrip_text:
            buf = buf.lstrip()
        if not self._text_started and not buf.strip():
            return "", ""
        return buf, ""

    def _text_part(self, part: str, out: list[str]) -> None:
        if not self._text_started and not part.strip():
            return  # leading whitespace before a tag
        self._text_started = True
        out.append(part)

    def _reasoning_part(self, part: str) -> str:
        if self._lstrip_reasoning:
            part = part.lstrip()
            if part:
                self._lstrip_reasoning = False
        return part


def split_think_tags(text: str, *, implicit_open: bool = True) -> tuple[str, str]:
    """Split a complete answer into ``(text, reasoning)``.

    On a whole answer a ``</think>`` with no ``<think>`` before it can only mean the template
    opened the tag, so ``implicit_open`` defaults to True here. Reasoning is stripped of the
    whitespace around it; the text keeps its own.
    """
    splitter = ThinkTagSplitter(implicit_open=implicit_open)
    text_a, reasoning_a = splitter.feed(text)
    text_b, reasoning_b = splitter.flush()
    return text_a + text_b, (reasoning_a + reasoning_b).rstrip()

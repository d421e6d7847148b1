"""Is an answer the greedy decoding of its own prompt? The oracle for batched generation.

A request's arithmetic depends on where its keys and values sit in the KV cache: attention sums
over the cells in their order, and a slot that has served earlier requests places new cells
wherever it has room. So a greedy answer after other traffic can part from the answer of the same
request on a fresh cache where two tokens' logits are nearly tied (in a fresh state the batched
answers are exactly the single ones). Equality of text is then the wrong test; the right
one is that every token of the answer is (within a small logit tolerance) the model's own top
choice for *that* prompt. A token taken from another request's sequence would fall far below.

The check runs llama-cpp-python's own ``Llama`` on the same GGUF, one sequence, every logit
kept, over prompt + answer: independent of our scheduler, context and cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Largest accepted gap (in logits) between the model's top token and the answer's token: cell
#: placement moved near-tied logits by up to 0.33 here (and a re-tokenized answer may split a
#: word differently from how it was generated); a token from another request's sequence is
#: many logits below the top one.
TOLERANCE = 0.5


class GreedyOracle:
    def __init__(self, model_path: Path) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(model_path), n_ctx=2048, logits_all=True, verbose=False,
                         flash_attn=True)  # as the engine runs

    def gap(self, prompt_tokens: list[int], answer: str) -> float:
        """The largest logit gap between the model's top token and the answer's, over the
        answer's tokens."""
        import numpy as np

        answer_tokens = self.llm.tokenize(answer.encode("utf-8"), add_bos=False, special=False)
        if not answer_tokens:
            return 0.0
        self.llm.reset()
        self.llm.eval(prompt_tokens + answer_tokens)
        start = len(prompt_tokens) - 1
        scores = np.asarray(self.llm.scores[start:start + len(answer_tokens)])
        return max(float(row.max() - row[t]) for row, t in zip(scores, answer_tokens, strict=True))

    def assert_greedy(self, prompt_tokens: list[int], answer: str, single: str | None = None,
                      ) -> None:
        """``answer`` equals ``single`` (the prompt's answer on its own), or parts from it only
        where the model's logits are tied within :data:`TOLERANCE`."""
        if single is not None and answer == single:
            return
        gap = self.gap(prompt_tokens, answer)
        assert gap <= TOLERANCE, (
            f"{answer!r} is not a greedy answer of its prompt (a token {gap:.2f} logits below "
            f"the top one); alone the prompt gave {single!r}")


def chat_tokens(backend: Any, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt tokens the llama.cpp backend renders for a plain chat request."""
    from modelplug.types import ChatRequest

    return backend._chat_tokens(backend._loaded().model, ChatRequest(messages=messages),
                                with_tools=False)

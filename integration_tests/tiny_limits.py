"""What the standard suites need to mark the 135M test model's known limits precisely.

langchain-tests wants an overridden test to carry its xfail mark on the override itself, so one
mark covers every parameter of it. :func:`fails_for` makes that mark strict per parameter: the
parameters named as failing must fail (and their failure becomes the expected
:class:`TinyModelLimit`), the others must pass like any test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

#: Standard-suite params that in-process providers refuse (there is no request to time out).
IN_PROCESS_REFUSED = ("timeout", "max_retries", "api_key")


class TinyModelLimit(Exception):
    """A standard test failed where the 135M model is known to fail; the reason says why."""


def tiny_limit(reason: str) -> pytest.MarkDecorator:
    """The mark for an override: only a :class:`TinyModelLimit` counts as the expected failure."""
    return pytest.mark.xfail(raises=TinyModelLimit, strict=False, reason=reason)


@contextmanager
def fails_for(param: str, failing: tuple[str, ...], reason: str,
              raises: type[Exception] | tuple[type[Exception], ...]) -> Iterator[None]:
    """Run the body of a test parametrized by ``param``; for a ``failing`` parameter, its
    failure, which must be ``raises`` (any other error fails the test), is the expected limit,
    and a pass is an error (the limit no longer holds)."""
    if param not in failing:
        yield
        return
    try:
        yield
    except raises as exc:
        raise TinyModelLimit(reason) from exc
    pytest.fail(f"{param!r} passed, so this no longer holds; remove it from the xfail: {reason}")

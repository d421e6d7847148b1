"""What the standard suites need to mark the 135M test model's known limits precisely.

langchain-tests wants an overridden standard test to carry an xfail mark with a reason on the
override itself (its test_no_overrides check). Where only some parameters of a test fail,
:func:`overridden` is that mark, with a False condition so it never applies, and
:func:`schema_types` marks the failing parameters one by one: each a strict xfail naming the
exact exception, so a failing parameter that passes, or fails any other way, fails the run, and
the others pass as plain tests.
"""

from __future__ import annotations

import pytest

#: Standard-suite params that in-process providers refuse (there is no request to time out).
IN_PROCESS_REFUSED = ("timeout", "max_retries", "api_key")
#: The schema types langchain-tests' structured-output tests are parametrized by.
SCHEMA_TYPES = ("pydantic", "typeddict", "json_schema")


def overridden(reason: str) -> pytest.MarkDecorator:
    """The override's own mark for langchain-tests (never applied: see :func:`schema_types`)."""
    return pytest.mark.xfail(False, reason=reason)


def schema_types(failing: tuple[str, ...], reason: str,
                 raises: type[Exception]) -> list[object]:
    """The ``schema_type`` parameters, those in ``failing`` each a strict xfail raising
    ``raises``."""
    unknown = set(failing) - set(SCHEMA_TYPES)
    assert not unknown, f"no such schema_type: {sorted(unknown)}"
    mark = pytest.mark.xfail(raises=raises, strict=True, reason=reason)
    return [pytest.param(t, marks=mark) if t in failing else t for t in SCHEMA_TYPES]

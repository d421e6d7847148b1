"""Fixtures for both test trees (unit_tests and integration_tests)."""

import pytest


@pytest.fixture(autouse=True)
def _fresh_health():
    """Each test starts with no health memory: an endpoint another test failed on purpose is
    not skipped here (fallback sets share modelplug.routing.HEALTH process-wide)."""
    from modelplug.routing import HEALTH

    HEALTH.clear()
    yield
    HEALTH.clear()


def _xfail_problem(mark: pytest.Mark) -> str | None:
    """What an xfail mark lacks to be a test that cannot lie, or None."""
    if mark.args and mark.args[0] is False:
        return None  # never applies (tiny_limits.overridden: the per-parameter marks do)
    if "raises" not in mark.kwargs:
        return "names no exception: add raises=<the exact exception>"
    if mark.kwargs.get("strict") is False:
        return "is not strict: an unexpected pass must fail the run"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every expected failure is strict (xfail_strict in pyproject.toml) and names its exception,
    so a test that fails for another reason, or passes, is reported."""
    bad = [f"{item.nodeid}: xfail {problem}" for item in items
           for mark in item.iter_markers("xfail")
           if (problem := _xfail_problem(mark)) is not None]
    if bad:
        raise pytest.UsageError("\n".join(bad))


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

"""The process-wide model cache: one load per key, failed loads leave nothing behind, and a
model's lock refuses re-entry from the thread holding it."""

from __future__ import annotations

import threading
import time

import pytest

from modelplug import ConfigurationError
from modelplug.weights import get_or_load, loaded_keys, unload


def test_a_waiter_on_a_failed_load_loads_into_the_cache() -> None:
    key = ("test", "orphan")
    calls: list[int] = []
    loading = threading.Event()

    def load() -> str:
        calls.append(1)
        if len(calls) == 1:  # the first load fails while the main thread waits for it
            loading.set()
            time.sleep(0.3)
            raise OSError("the first load fails")
        return "model"

    failed: list[BaseException] = []

    def first() -> None:
        try:
            get_or_load(key, load)
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    loading.wait()
    entry = get_or_load(key, load)  # waits on the failing load, then loads itself
    thread.join()
    try:
        assert failed and entry.model == "model"
        assert get_or_load(key, load) is entry and len(calls) == 2  # cached, not loaded again
        assert key in loaded_keys()
    finally:
        unload(key)
    assert key not in loaded_keys()


def test_the_lock_refuses_reentry_but_lets_other_threads_wait() -> None:
    entry = get_or_load(("test", "lock"), lambda: "model")
    try:
        order: list[str] = []
        with entry.lock:
            with pytest.raises(ConfigurationError, match=r"\('test', 'lock'\) is already "
                                                         "generating in this thread"):
                with entry.lock:
                    pass

            def wait_for_the_turn() -> None:
                with entry.lock:
                    order.append("other")

            other = threading.Thread(target=wait_for_the_turn)
            other.start()
            time.sleep(0.1)
            order.append("holder")  # the other thread is still waiting
        other.join(timeout=5)
        assert order == ["holder", "other"]
    finally:
        unload(("test", "lock"))

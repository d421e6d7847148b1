"""The one process-wide cache of loaded in-process models.

Every adapter that names the same model with the same load settings gets the same loaded object,
so two chat models, an embeddings object and a LlamaIndex LLM share one copy of the weights.
Each entry carries a lock: in-process runtimes (llama.cpp contexts, generate() on one model) are
not safe to drive from two threads at once, so calls that drive the model directly take turns.
Models that batch concurrent callers do so through a scheduler (:mod:`modelplug.scheduling`),
which owns its own runtime and needs no lock per call. Objects built over a model (a scheduler,
llama.cpp's embedding context) are the entry's companions and are dropped with it.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from modelplug.errors import ConfigurationError


class ModelLock:
    """One model's lock, which refuses re-entry from the thread that holds it.

    A sync stream holds its model's lock while it yields; a call on the same model from inside
    that loop (the loop body, a callback) would otherwise drive one llama.cpp context or one
    generate() twice at once (with a re-entrant lock) or wait for itself forever (with a plain
    one). Other threads wait their turn as usual.
    """

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> ModelLock:
        if self._owner == threading.get_ident():
            raise ConfigurationError(
                f"The in-process model {_name(self.key)} is already generating in this thread: a "
                "stream on it is still open, and this call came from inside it (its loop body "
                "or a callback). Finish or close that stream first, collect it into a list, or "
                "make the second call from another thread (it then waits its turn).")
        self._lock.acquire()
        self._owner = threading.get_ident()
        return self

    def __exit__(self, *exc: object) -> None:
        self._owner = None
        self._lock.release()


def _name(key: Hashable) -> str:
    """A cache key as a reader knows it: the runtime and the model (``('llamacpp', path)``)."""
    return repr(key[:2]) if isinstance(key, tuple) else repr(key)


@dataclass
class LoadedModel:
    key: Hashable
    model: Any = None
    #: Held while loading and for every call that drives the model.
    lock: ModelLock = field(init=False)
    companions: dict[str, Any] = field(default_factory=dict)
    _companions_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.lock = ModelLock(self.key)

    def companion(self, name: str, build: Callable[[], Any]) -> Any:
        """An object built once over this model (and unloaded with it), from any thread."""
        with self._companions_lock:
            if name not in self.companions:
                self.companions[name] = build()
            return self.companions[name]

    def retire(self) -> None:
        """Stop this entry's schedulers: requests already queued finish, new ones are refused."""
        for companion in list(self.companions.values()):
            retire = getattr(companion, "retire", None)
            if retire is not None:
                retire()


_entries: dict[Hashable, LoadedModel] = {}
_entries_lock = threading.Lock()


def get_or_load(key: Hashable, load: Callable[[], Any]) -> LoadedModel:
    """The loaded model for ``key``, loading it once (other threads wait for that load).

    A failed load leaves nothing behind, so the next call tries again.
    """
    with _entries_lock:
        entry = _entries.setdefault(key, LoadedModel(key))
    if entry.model is None:
        with entry.lock:
            if entry.model is None:
                with _entries_lock:
                    orphaned = _entries.get(key) is not entry
                if orphaned:  # the load this thread waited for failed: start over, cached
                    return get_or_load(key, load)
                try:
                    entry.model = load()
                except BaseException:
                    with _entries_lock:
                        if _entries.get(key) is entry:
                            del _entries[key]
                    raise
    return entry


def unload(key: Hashable | None = None) -> int:
    """Drop one model (or all, with no key) from the cache; returns how many were dropped.

    Weights are freed once no call still running on them holds a reference.
    """
    with _entries_lock:
        keys = list(_entries) if key is None else [key] if key in _entries else []
        dropped = [_entries.pop(k) for k in keys]
    for entry in dropped:
        entry.retire()
    return len(keys)


def peek(key: Hashable) -> LoadedModel | None:
    """The loaded entry for ``key`` if there is one (never loads)."""
    with _entries_lock:
        entry = _entries.get(key)
    return entry if entry is not None and entry.model is not None else None


def loaded_keys() -> list[Hashable]:
    with _entries_lock:
        return [k for k, e in _entries.items() if e.model is not None]


@atexit.register
def _close_all() -> None:
    """At exit: stop the schedulers, then free native models while their libraries are still
    loaded (a llama.cpp model freed during interpreter teardown finds its C functions gone)."""
    with _entries_lock:
        entries = list(_entries.values())
        _entries.clear()
    for entry in entries:
        for companion in list(entry.companions.values()):
            shutdown = getattr(companion, "shutdown", None)
            if shutdown is not None:
                with contextlib.suppress(Exception):
                    shutdown("the interpreter is exiting", 2.0)
        close = getattr(entry.model, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()

"""The one process-wide cache of loaded in-process models.

Every adapter that names the same model with the same load settings gets the same loaded object,
so two chat models, an embeddings object and a LlamaIndex LLM share one copy of the weights.
Each entry carries a lock: in-process runtimes (llama.cpp contexts, generate() on one model) are
not safe to drive from two threads at once, so calls on one model take turns. Objects built over
a model (llama.cpp's embedding context) are the entry's companions and are dropped with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadedModel:
    key: Hashable
    model: Any = None
    #: Held while loading and for every call that drives the model.
    lock: threading.RLock = field(default_factory=threading.RLock)
    companions: dict[str, Any] = field(default_factory=dict)

    def companion(self, name: str, build: Callable[[], Any]) -> Any:
        """An object built once over this model (and unloaded with it); call under the lock."""
        if name not in self.companions:
            self.companions[name] = build()
        return self.companions[name]


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
        for k in keys:
            del _entries[k]
    return len(keys)


def loaded_keys() -> list[Hashable]:
    with _entries_lock:
        return [k for k, e in _entries.items() if e.model is not None]

"""The client plumbing every backend that reaches a provider through its SDK shares.

The API key (the ``api_key`` setting, else the row's environment variable), the sync client built
on first use, and one async client per event loop: an async connection pool belongs to the loop
that opened it, so a client reused from a second loop (``asyncio.run`` twice, a worker thread
with a loop of its own) fails on its pooled connections.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from typing import Any

from modelplug.backends.base import Backend
from modelplug.errors import ConfigurationError
from modelplug.registry import ProviderSpec


class NetworkedClients:
    """The API key and the SDK clients of a backend that reaches its provider over the network,
    for any kind of backend (chat: :class:`NetworkedBackend`; images: Gemini's). Subclasses
    build their SDK's clients in :meth:`new_client`; :attr:`client` and :attr:`aclient` hand
    them out. Needs ``spec`` and ``settings``, which the backend's own base sets."""

    spec: ProviderSpec
    settings: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client_lock = threading.Lock()
        self._client: Any = None
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary())

    # -- the API key ------------------------------------------------------------------------------

    def api_key(self) -> Any:
        """The key as given (a SecretStr stays wrapped), else the row's environment variable's
        value, else None."""
        key = self.settings.get("api_key")
        if key is not None:
            return key
        env = self.spec.api_key_env
        return os.environ.get(env) or None if env else None

    def require_api_key(self) -> Any:
        """:meth:`api_key`, or a :class:`ConfigurationError` naming where a key goes: called at
        construction, so a missing key fails before any request."""
        key = self.api_key()
        if key is None:
            env = self.spec.api_key_env
            where = f"set the {env} environment variable or pass" if env else "pass"
            raise ConfigurationError(
                f"Provider {self.spec.key!r} needs an API key and none was found: {where} "
                "the setting api_key.", setting="api_key")
        return key

    def secrets(self) -> list[Any]:
        """The key in use: it never appears in an error message."""
        key = self.api_key()
        return [] if key is None else [key]

    @staticmethod
    def secret_value(key: Any) -> Any:
        """A SecretStr's value (unwrapped only here, straight into an SDK client)."""
        return key.get_secret_value() if hasattr(key, "get_secret_value") else key

    # -- clients ----------------------------------------------------------------------------------

    def new_client(self, is_async: bool) -> Any:
        """A new SDK client, async or sync."""
        raise NotImplementedError

    @property
    def client(self) -> Any:
        """The sync client, built on first use."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self.new_client(False)
        return self._client

    @property
    def aclient(self) -> Any:
        """The async client of the running event loop, built on its first use there."""
        loop = asyncio.get_running_loop()
        with self._client_lock:
            client = self._aclients.get(loop)
            if client is None:
                # A closed loop never runs again. Its client may hold the loop (the openai SDK's
                # does, google-genai's keeps a session per loop), which keeps the weak key alive:
                # drop it here, or every asyncio.run would leave one client behind for as long
                # as the backend lives.
                for closed in [old for old in self._aclients if old.is_closed()]:
                    del self._aclients[closed]
                client = self._aclients[loop] = self.new_client(True)
        return client


class NetworkedBackend(NetworkedClients, Backend):
    """Base of the SDK-backed chat backends (OpenAI-compatible, Anthropic, Ollama)."""

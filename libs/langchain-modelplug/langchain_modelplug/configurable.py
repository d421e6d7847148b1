"""``chat_model()``: like LangChain's ``init_chat_model``, over every modelplug provider.

With ``configurable_fields``, the model is chosen per call from ``config["configurable"]``. Each
distinct configuration builds one ``ChatModelPlug`` (kept in a small LRU), and in-process weights
come from modelplug's process-wide cache, so switching the temperature, or back and forth
between models, never reloads weights that are already loaded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AnyMessage, BaseMessage
from langchain_core.prompt_values import ChatPromptValueConcrete, StringPromptValue
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config
from pydantic import SecretStr

from langchain_modelplug.chat_models import ChatModelPlug

#: Methods whose call is recorded and replayed on each configured model.
_DECLARATIVE = ("bind_tools", "with_structured_output", "bind")
_CACHE_SIZE = 16


def chat_model(
    model: str | None = None,
    *,
    configurable_fields: Literal["any"] | Sequence[str] | None = None,
    config_prefix: str | None = None,
    **kwargs: Any,
) -> ChatModelPlug | ConfigurableChatModel:
    """A chat model for ``"provider:model_id"``, fixed or configurable per call.

    Args:
        model: ``"provider:model_id"`` (``"openai:gpt-4o-mini"``, ``"llamacpp:smollm2"``), or None
            for the first model available locally (or, when configurable, the one each call
            names).
        configurable_fields: None: a plain ``ChatModelPlug``. A list of field names
            (``["model", "temperature"]``) or ``"any"`` (every ChatModelPlug field and provider
            setting): a runnable that reads them from ``config["configurable"]`` on each call.
            Security note, as for LangChain's ``init_chat_model``: with ``"any"``, a config can
            also set ``api_key`` and ``base_url`` and so send requests (and their content) to
            another service or account; when configs come from untrusted callers, list the
            fields instead.
        config_prefix: Read ``"{prefix}_{field}"`` keys instead of bare field names, so several
            configurable models can share one config.
        **kwargs: Defaults for every call (``temperature=0``, ``max_tokens=256``,
            ``model_path=...``).

    Example:
        .. code-block:: python

            from langchain_modelplug import chat_model

            llm = chat_model("llamacpp:smollm2", configurable_fields=["model", "temperature"])
            llm.invoke("Hi", config={"configurable": {"temperature": 0.7}})
            llm.bind_tools([get_weather]).invoke(
                "Weather in Paris?", config={"configurable": {"model": "openai:gpt-4o-mini"}})
    """
    if configurable_fields is None:
        if config_prefix:
            raise ValueError(
                f"config_prefix={config_prefix!r} has no effect without configurable_fields. "
                "Pass configurable_fields=['model', ...] (or 'any'), or drop config_prefix."
            )
        return ChatModelPlug(model=model, **kwargs)
    if configurable_fields != "any":
        if isinstance(configurable_fields, str):
            raise TypeError(
                f"configurable_fields={configurable_fields!r}: pass 'any' or a list of field "
                f"names, e.g. [{configurable_fields!r}]."
            )
        unknown = sorted(set(configurable_fields) - _configurable_names())
        if unknown:
            raise ValueError(
                f"configurable_fields names unknown setting(s) {unknown}. Configurable: "
                f"{sorted(_configurable_names())}."
            )
    defaults = {"model": model, **kwargs} if model is not None else dict(kwargs)
    return ConfigurableChatModel(defaults=defaults, configurable_fields=configurable_fields,
                                 config_prefix=config_prefix or "")


def _configurable_names() -> set[str]:
    """ChatModelPlug's fields and every provider's settings."""
    from modelplug.registry import providers

    names = set(ChatModelPlug.model_fields) - {"provider_kwargs", "callbacks", "callback_manager",
                                                 "metadata", "tags", "cache", "verbose",
                                                 "rate_limiter", "custom_get_token_ids"}
    names |= {f.alias for f in ChatModelPlug.model_fields.values() if f.alias}
    for spec in providers().values():
        names |= set(spec.kwargs)
    return names


class ConfigurableChatModel(Runnable[LanguageModelInput, Any]):
    """A ChatModelPlug chosen per call from ``config["configurable"]`` (see :func:`chat_model`).

    ``bind_tools``, ``with_structured_output`` and ``bind`` are recorded and applied to the model
    each call configures.
    """

    def __init__(self, *, defaults: dict[str, Any],
                 configurable_fields: Literal["any"] | Sequence[str],
                 config_prefix: str = "",
                 operations: Sequence[tuple[str, tuple, dict[str, Any]]] = ()) -> None:
        self.defaults = dict(defaults)
        self.configurable_fields = (
            "any" if configurable_fields == "any" else tuple(configurable_fields))
        self.config_prefix = (config_prefix + "_" if config_prefix
                              and not config_prefix.endswith("_") else config_prefix)
        self.operations = list(operations)
        self._models: OrderedDict[str, ChatModelPlug] = OrderedDict()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name in _DECLARATIVE:
            def record(*args: Any, **kwargs: Any) -> ConfigurableChatModel:
                return ConfigurableChatModel(
                    defaults=self.defaults, configurable_fields=self.configurable_fields,
                    config_prefix=self.config_prefix,
                    operations=[*self.operations, (name, args, kwargs)])

            return record
        raise AttributeError(
            f"{type(self).__name__} has no attribute {name!r}; the configured ChatModelPlug "
            f"is built per call. Use model_for(config) to get it."
        )

    # -- the model a config selects -----------------------------------------------------------

    def params(self, config: RunnableConfig | None = None) -> dict[str, Any]:
        """The ChatModelPlug keyword arguments a config selects (defaults, then config)."""
        configurable = ensure_config(config).get("configurable", {})
        allowed = (_configurable_names() if self.configurable_fields == "any"
                   else set(self.configurable_fields))
        chosen = {}
        for key, value in configurable.items():
            if not key.startswith(self.config_prefix):
                continue
            name = key[len(self.config_prefix):]
            if name in allowed:
                chosen[name] = value
        return {**self.defaults, **chosen}

    def model_for(self, config: RunnableConfig | None = None) -> ChatModelPlug:
        """The ChatModelPlug for a config: built once per distinct configuration."""
        params = self.params(config)
        # SecretStr values by their secret: their repr is masked, and two keys must not share
        # one model. (The cache key stays in memory; nothing logs it.)
        key = repr(sorted((k, v.get_secret_value() if isinstance(v, SecretStr) else v)
                          for k, v in params.items()))
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
        model = ChatModelPlug(**params)
        with self._lock:
            self._models[key] = model
            while len(self._models) > _CACHE_SIZE:
                self._models.popitem(last=False)
        return model

    def _runnable(self, config: RunnableConfig | None) -> Runnable:
        runnable: Any = self.model_for(config)
        for name, args, kwargs in self.operations:
            runnable = getattr(runnable, name)(*args, **kwargs)
        return runnable

    # -- Runnable -------------------------------------------------------------------------------

    @property
    def InputType(self) -> Any:
        return str | StringPromptValue | ChatPromptValueConcrete | list[AnyMessage]

    @property
    def OutputType(self) -> Any:
        return BaseMessage if not self.operations else Any

    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None,
               **kwargs: Any) -> Any:
        return self._runnable(config).invoke(input, config, **kwargs)

    async def ainvoke(self, input: LanguageModelInput, config: RunnableConfig | None = None,
                      **kwargs: Any) -> Any:
        return await self._runnable(config).ainvoke(input, config, **kwargs)

    def stream(self, input: LanguageModelInput, config: RunnableConfig | None = None,
               **kwargs: Any) -> Iterator[Any]:
        yield from self._runnable(config).stream(input, config, **kwargs)

    async def astream(self, input: LanguageModelInput, config: RunnableConfig | None = None,
                      **kwargs: Any) -> AsyncIterator[Any]:
        async for chunk in self._runnable(config).astream(input, config, **kwargs):
            yield chunk

    def __repr__(self) -> str:
        return (f"ConfigurableChatModel(defaults={self.defaults!r}, "
                f"configurable_fields={self.configurable_fields!r}, "
                f"config_prefix={self.config_prefix!r}, operations={len(self.operations)})")

"""The private BaseChatModel hooks langchain_modelplug calls, against the installed langchain-core.

FallbackChatModel runs a candidate inside its own chat-model run (one start, one end, tokens
once), which LangChain's public API cannot do: invoke() and stream() start a run of their own.
So it calls the hooks BaseChatModel.invoke and stream call (``_generate_with_cache``,
``_should_stream``, ``_stream``, ...), and the attempts' child runs and the native batch start
runs the way BaseChatModel does (``_serialized``, ``_get_invocation_params``, ...). These are
private: langchain-core may change them in any release, so the dependency is pinned to the
releases checked to have them (libs/langchain-modelplug/pyproject.toml), and each hook is
checked here against the arguments we pass: a change fails this test, naming the hook and the
call site, instead of failing a user's fallback at runtime.
"""

from __future__ import annotations

import functools
import inspect
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).parents[1] / "libs" / "langchain-modelplug" / "pyproject.toml"

#: A keyword argument of a call (tools=, response_format=, headers=, ...): the hooks that
#: take a call's keyword arguments must still pass them on.
CALL_KWARG = {"any_call_kwarg": object()}

#: hook -> (how it must be defined, the positional and keyword arguments we call it with,
#: where we call it).
HOOKS: dict[str, tuple[str, tuple[Any, ...], dict[str, Any], str]] = {
    "_generate_with_cache": ("def", ([],), {"stop": None, "run_manager": None, **CALL_KWARG},
                             "fallback.py FallbackChatModel._generate and _stream"),
    "_agenerate_with_cache": ("async def", ([],),
                              {"stop": None, "run_manager": None, **CALL_KWARG},
                              "fallback.py FallbackChatModel._agenerate and _astream"),
    "_should_stream": ("def", (), {"async_api": False, "run_manager": None, "stream": True,
                                   **CALL_KWARG},
                       "fallback.py FallbackChatModel._stream and _astream"),
    "_stream": ("def", ([],), {"stop": None, "run_manager": None, **CALL_KWARG},
                "fallback.py FallbackChatModel._stream"),
    "_astream": ("async generator", ([],), {"stop": None, "run_manager": None, **CALL_KWARG},
                 "fallback.py FallbackChatModel._astream"),
    "_get_ls_params": ("def", (), {"stop": None, **CALL_KWARG},
                       "fallback.py _ls_params, _attempts.py _child_manager"),
    "_get_invocation_params": ("def", (), {"stop": None, **CALL_KWARG},
                               "_attempts.py _start_kwargs, chat_models.py _BatchPlan.starts"),
    "_convert_input": ("def", ("a question",), {}, "chat_models.py _BatchPlan"),
}


def _kind(function: Any) -> str:
    if inspect.isasyncgenfunction(function):
        return "async generator"
    return "async def" if inspect.iscoroutinefunction(function) else "def"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_each_private_hook_takes_the_arguments_we_pass(name: str) -> None:
    kind, args, kwargs, caller = HOOKS[name]
    where = (f"langchain-core {version('langchain-core')} changed BaseChatModel.{name}, which "
             f"langchain_modelplug calls ({caller})")
    function = getattr(BaseChatModel, name, None)
    assert callable(function), f"{where}: it is gone."
    assert _kind(function) == kind, f"{where}: it is now '{_kind(function)}', not '{kind}'."
    try:
        inspect.signature(function).bind(object(), *args, **kwargs)
    except TypeError as exc:
        pytest.fail(f"{where}: its signature {inspect.signature(function)} no longer takes "
                    f"{args!r} and {sorted(kwargs)} ({exc}). Adapt the call, then set the "
                    f"langchain-core range in {PYPROJECT.name} to the releases checked.")


def test_serialized_is_the_run_start_payload() -> None:
    """``_serialized`` (what on_chat_model_start receives as ``serialized``) is read by the
    attempts' child runs and the native batch."""
    attribute = inspect.getattr_static(BaseChatModel, "_serialized", None)
    assert isinstance(attribute, property | functools.cached_property), (
        f"langchain-core {version('langchain-core')} changed BaseChatModel._serialized, which "
        "_attempts.py _start_kwargs and chat_models.py _BatchPlan.starts read.")


def test_installed_langchain_core_is_in_the_pinned_range() -> None:
    """The hooks above were checked on the releases the pin admits; a langchain-core outside
    it is untested with them."""
    [pin] = [Requirement(d) for d in re.findall(r'"(langchain-core[^"]*)"', PYPROJECT.read_text())]
    installed = version("langchain-core")
    assert pin.specifier.contains(installed, prereleases=True), (
        f"langchain-core {installed} is outside {pin} ({PYPROJECT}), the releases whose "
        "private BaseChatModel hooks langchain_modelplug was checked against: run this file's "
        "tests, and widen the pin once they pass.")
    assert any(s.operator == "<" for s in pin.specifier), (
        f"{pin} has no upper bound: langchain_modelplug calls private BaseChatModel hooks, so "
        "only releases checked to have them may be admitted.")

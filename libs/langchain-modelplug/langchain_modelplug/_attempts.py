"""Each candidate's attempt inside a FallbackChatModel run, as a child chat-model run.

A fallback call stays one chat-model run (tokens streamed once, usage counted once, on it). For
tracing (LangSmith, OpenInference, OpenTelemetry's LangChain instrumentation) each candidate it
tries is also a child run named and described by that candidate (its class, its own
``ls_provider``/``ls_model_name`` and invocation params): a failed attempt ends with its error,
the answering one with the answer, without usage (the fallback run carries it, so tracers that
sum tokens over a trace count them once). The child runs are tagged ``nostream`` so LangGraph's
messages stream does not repeat the answer. Nothing is started when no handler listens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult

R = TypeVar("R")

_NOSTREAM = "nostream"


def _child_manager(model: BaseChatModel, run_manager: Any, stop: list[str] | None,
                   kwargs: dict[str, Any]) -> Any:
    from langchain_core.callbacks import AsyncCallbackManager, CallbackManager
    from langchain_core.callbacks.manager import AsyncCallbackManagerForLLMRun

    cls = AsyncCallbackManager if isinstance(run_manager, AsyncCallbackManagerForLLMRun) \
        else CallbackManager
    manager = cls(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    try:
        params = dict(model._get_ls_params(stop=stop, **kwargs))
    except Exception:  # a model whose ls params need more than this call's kwargs
        params = {}
    manager.add_metadata(params, inherit=False)
    manager.add_tags([_NOSTREAM], inherit=False)
    return manager


def _start_kwargs(model: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None,
                  kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        params = model._get_invocation_params(stop=stop, **kwargs)
    except Exception:
        params = {}
    return {"serialized": model._serialized, "messages": [messages],
            "invocation_params": params, "options": {"stop": stop}, "batch_size": 1}


def _answer(message: BaseMessage | None) -> LLMResult:
    """The child run's output: the answer without its usage (counted on the fallback run)."""
    if message is None:
        return LLMResult(generations=[[]])
    if isinstance(message, AIMessage):
        message = AIMessage(content=message.content, additional_kwargs=message.additional_kwargs,
                            response_metadata=message.response_metadata,
                            tool_calls=message.tool_calls, id=message.id)
    model_name = (message.response_metadata or {}).get("model_name")
    return LLMResult(generations=[[ChatGeneration(message=message)]],
                     llm_output={"model_name": model_name} if model_name else None)


def _listens(run_manager: Any) -> bool:
    return run_manager is not None and bool(run_manager.handlers)


def attempted(model: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None,
              kwargs: dict[str, Any], run_manager: Any, call: Callable[[], ChatResult],
              ) -> ChatResult:
    """``call()`` (the candidate's generation) as a child run of ``run_manager``'s run."""
    if not _listens(run_manager):
        return call()
    child = _child_manager(model, run_manager, stop, kwargs).on_chat_model_start(
        **_start_kwargs(model, messages, stop, kwargs))[0]
    try:
        result = call()
    except BaseException as exc:
        child.on_llm_error(exc)
        raise
    child.on_llm_end(_answer(result.generations[0].message if result.generations else None))
    return result


async def aattempted(model: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None,
                     kwargs: dict[str, Any], run_manager: Any,
                     call: Callable[[], Awaitable[ChatResult]]) -> ChatResult:
    if not _listens(run_manager):
        return await call()
    children = await _child_manager(model, run_manager, stop, kwargs).on_chat_model_start(
        **_start_kwargs(model, messages, stop, kwargs))
    child = children[0]
    try:
        result = await call()
    except BaseException as exc:
        await child.on_llm_error(exc)
        raise
    await child.on_llm_end(_answer(result.generations[0].message if result.generations
                                   else None))
    return result


def _merge(total: ChatGenerationChunk | None, chunk: ChatGenerationChunk,
           ) -> ChatGenerationChunk:
    return chunk if total is None else total + chunk


def attempted_stream(model: BaseChatModel, messages: list[BaseMessage],
                     stop: list[str] | None, kwargs: dict[str, Any], run_manager: Any,
                     start: Callable[[], Iterator[ChatGenerationChunk]],
                     ) -> Iterator[ChatGenerationChunk]:
    """The candidate's chunks (``start()``), its attempt a child run that ends with the
    stream: with the merged answer, the error that cut it, or nothing when it was closed."""
    if not _listens(run_manager):
        yield from start()
        return
    child = _child_manager(model, run_manager, stop, kwargs).on_chat_model_start(
        **_start_kwargs(model, messages, stop, kwargs))[0]
    total: ChatGenerationChunk | None = None
    try:
        for chunk in start():
            total = _merge(total, chunk)
            yield chunk
    except BaseException as exc:  # failed, closed early (GeneratorExit) or cancelled
        child.on_llm_error(exc)
        raise
    child.on_llm_end(_answer(total.message if total is not None else None))


async def aattempted_stream(model: BaseChatModel, messages: list[BaseMessage],
                            stop: list[str] | None, kwargs: dict[str, Any], run_manager: Any,
                            start: Callable[[], AsyncIterator[ChatGenerationChunk]],
                            ) -> AsyncIterator[ChatGenerationChunk]:
    if not _listens(run_manager):
        async for chunk in start():
            yield chunk
        return
    children = await _child_manager(model, run_manager, stop, kwargs).on_chat_model_start(
        **_start_kwargs(model, messages, stop, kwargs))
    child = children[0]
    total: ChatGenerationChunk | None = None
    try:
        async for chunk in start():
            total = _merge(total, chunk)
            yield chunk
    except BaseException as exc:
        await child.on_llm_error(exc)
        raise
    await child.on_llm_end(_answer(total.message if total is not None else None))


def traced_start(start: Callable[[Any], Iterator[ChatGenerationChunk]],
                 messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                 run_manager: Any) -> Callable[[Any], Iterator[ChatGenerationChunk]]:
    """A fallback stream's ``start(target)``, each chat-model candidate's attempt a child run
    (a candidate that is no chat model already runs as a child runnable)."""
    from langchain_modelplug.fallback import _call_kwargs, _unwrap

    def begin(target: Any) -> Iterator[ChatGenerationChunk]:
        unwrapped = _unwrap(target) if _listens(run_manager) else None
        if unwrapped is None:
            return start(target)
        model, bound = unwrapped
        return attempted_stream(model, messages, stop, _call_kwargs(bound, kwargs), run_manager,
                                lambda: start(target))
    return begin


def traced_astart(start: Callable[[Any], AsyncIterator[ChatGenerationChunk]],
                  messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                  run_manager: Any) -> Callable[[Any], AsyncIterator[ChatGenerationChunk]]:
    """Async :func:`traced_start`."""
    from langchain_modelplug.fallback import _call_kwargs, _unwrap

    def begin(target: Any) -> AsyncIterator[ChatGenerationChunk]:
        unwrapped = _unwrap(target) if _listens(run_manager) else None
        if unwrapped is None:
            return start(target)
        model, bound = unwrapped
        return aattempted_stream(model, messages, stop, _call_kwargs(bound, kwargs),
                                 run_manager, lambda: start(target))
    return begin


def answered_by(result: ChatResult) -> dict[str, Any]:
    """``llm_output`` naming the model that answered (tracers read ``model_name`` there)."""
    message = result.generations[0].message if result.generations else None
    name = (message.response_metadata or {}).get("model_name") if message is not None else None
    return {"model_name": name} if name else {}

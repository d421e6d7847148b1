"""ModelPlugLLM: a LangChain text-completion LLM over modelplug backends that have completion."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict

from langchain_modelplug._backend_fields import GenerationFields
from modelplug import CompletionRequest, UnsupportedCapabilityError
from modelplug.errors import amend_message
from modelplug.types import ChatChunk, ChatResponse, Usage, request_fields


@contextlib.contextmanager
def _chat_hint(model: str | None) -> Iterator[None]:
    """A completion call the provider cannot serve: point to the LangChain chat model."""
    try:
        yield
    except UnsupportedCapabilityError as exc:
        amend_message(exc, after=f" Use ChatModelPlug(model={model!r}) for this model.")
        raise


def _usage_dict(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {}
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens}


class ModelPlugLLM(GenerationFields, BaseLLM):
    """Text completion (no chat template) over modelplug providers that have it.

    The prompt is sent as-is: in-process models (``llamacpp:``) complete it directly, and
    providers with a completion endpoint use it. A provider without raw completion raises
    ``UnsupportedCapabilityError`` on the first call, naming ``ChatModelPlug`` as the fix.

    Setup:
        .. code-block:: bash

            pip install "langchain-modelplug[llamacpp]"

    Key init args — model:
        model: str | None
            ``"provider:model_id"`` (``"llamacpp:smollm2"``), or None for the first local model.
        **provider kwargs
            Provider-specific settings (``model_path``, ``n_ctx`` for llamacpp; ``base_url``).

    Key init args — completion params:
        temperature: float | None
        max_tokens: int | None
        top_p: float | None
        stop: list[str] | None
        seed: int | None

    Key init args — client params:
        timeout: float | None
        max_retries: int | None
        api_key: SecretStr | None
        base_url: str | None

    Instantiate:
        .. code-block:: python

            from langchain_modelplug import ModelPlugLLM

            llm = ModelPlugLLM(model="llamacpp:smollm2", temperature=0, max_tokens=32)

    Invoke:
        .. code-block:: python

            llm.invoke("The capital of France is")
            # ' Paris, ...'

    Stream:
        .. code-block:: python

            for text in llm.stream("Once upon a time"):
                print(text, end="")

    Async:
        .. code-block:: python

            await llm.ainvoke("The capital of France is")
            async for text in llm.astream("Once upon a time"):
                ...

    Token usage:
        .. code-block:: python

            result = llm.generate(["The capital of France is"])
            result.llm_output["token_usage"]
            # {'prompt_tokens': 6, 'completion_tokens': 32, 'total_tokens': 38}
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    @property
    def _llm_type(self) -> str:
        return "modelplug-llm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, **self._sampling_params()}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        ref = self._backend.ref
        params = LangSmithParams(ls_provider=ref.provider, ls_model_name=ref.model_id,
                                 ls_model_type="llm")
        return self._sampling_ls_params(params, stop, kwargs)

    # -- requests -------------------------------------------------------------------------------

    def _sampling_params(self) -> dict[str, Any]:
        return request_fields(self, {}, completion=True)[0]

    def _request(self, prompt: str, stop: list[str] | None,
                 kwargs: dict[str, Any]) -> CompletionRequest:
        fields, extra = request_fields(self, kwargs, completion=True)
        if stop is not None:
            fields["stop"] = stop
        extra.pop("stream", None)
        return CompletionRequest(prompt=prompt, extra=extra, **fields)

    @staticmethod
    def _info(finish_reason: str | None, model: str) -> dict[str, Any]:
        return {"finish_reason": finish_reason, "model_name": model}

    def _result(self, responses: list[ChatResponse]) -> LLMResult:
        total = Usage()
        for response in responses:
            if response.usage is not None:
                total.input_tokens += response.usage.input_tokens
                total.output_tokens += response.usage.output_tokens
        return LLMResult(
            generations=[[Generation(text=r.text, generation_info=self._info(
                r.finish_reason, r.model))] for r in responses],
            llm_output={"token_usage": _usage_dict(total), "model_name": self.model},
        )

    def _generation_chunk(self, chunk: ChatChunk) -> GenerationChunk:
        info = None
        if chunk.finish_reason is not None or chunk.usage is not None:
            info = {**self._info(chunk.finish_reason, chunk.model),
                    "token_usage": _usage_dict(chunk.usage)}
        return GenerationChunk(text=chunk.text, generation_info=info)

    # -- calls ----------------------------------------------------------------------------------

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> LLMResult:
        responses = []
        for prompt in prompts:
            if self.streaming:
                responses.append(self._collect(self._stream(prompt, stop, run_manager, **kwargs)))
            else:
                with _chat_hint(self.model):
                    responses.append(self._backend.complete(self._request(prompt, stop, kwargs)))
        return self._result(responses)

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> LLMResult:
        responses = []
        for prompt in prompts:
            if self.streaming:
                chunks = [c async for c in self._astream(prompt, stop, run_manager, **kwargs)]
                responses.append(self._collect(iter(chunks)))
            else:
                with _chat_hint(self.model):
                    responses.append(
                        await self._backend.acomplete(self._request(prompt, stop, kwargs)))
        return self._result(responses)

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[GenerationChunk]:
        with _chat_hint(self.model):
            for chunk in self._backend.stream_complete(self._request(prompt, stop, kwargs)):
                generation = self._generation_chunk(chunk)
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=generation)
                yield generation

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        with _chat_hint(self.model):
            async for chunk in self._backend.astream_complete(
                    self._request(prompt, stop, kwargs)):
                generation = self._generation_chunk(chunk)
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=generation)
                yield generation

    @staticmethod
    def _collect(chunks: Iterator[GenerationChunk]) -> ChatResponse:
        """The streamed GenerationChunks (what the callbacks saw) as one response."""
        response, parts = ChatResponse(), []
        for chunk in chunks:
            parts.append(chunk.text)
            info = chunk.generation_info or {}
            response.finish_reason = info.get("finish_reason") or response.finish_reason
            response.model = info.get("model_name") or response.model
            usage = info.get("token_usage")
            if usage:
                response.usage = Usage(input_tokens=usage["prompt_tokens"],
                                       output_tokens=usage["completion_tokens"])
        response.text = "".join(parts)
        return response

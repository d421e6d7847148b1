"""LlamaIndex LLMs for every modelplug backend: ``ModelPlug`` (a FunctionCallingLLM) and
``FallbackLLM`` (the first of several LLMs that answers), plus ``image_tool`` / ``audio_tool``
(FunctionTools answering with ImageBlocks / AudioBlocks)."""

from llama_index.llms.modelplug.base import ModelPlug
from llama_index.llms.modelplug.fallback import FallbackLLM
from llama_index.llms.modelplug.media import audio_tool, image_tool
from llama_index.llms.modelplug.usage import UsageCostEventHandler

__all__ = ["FallbackLLM", "ModelPlug", "UsageCostEventHandler", "audio_tool", "image_tool"]

"""LlamaIndex LLMs for every modelplug backend: ``ModelPlug`` (a FunctionCallingLLM) and
``FallbackLLM`` (the first of several LLMs that answers)."""

from llama_index.llms.modelplug.base import ModelPlug
from llama_index.llms.modelplug.fallback import FallbackLLM

__all__ = ["FallbackLLM", "ModelPlug"]

"""LangChain integration for modelplug: one chat model class over every backend."""

from langchain_modelplug.chat_models import ChatModelPlug

__all__ = ["ChatModelPlug"]

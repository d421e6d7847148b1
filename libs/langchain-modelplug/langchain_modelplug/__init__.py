"""LangChain integration for modelplug: chat models, text LLMs, embeddings and fallbacks over
every modelplug backend."""

from langchain_modelplug.chat_models import ChatModelPlug
from langchain_modelplug.configurable import ConfigurableChatModel, chat_model
from langchain_modelplug.embeddings import ModelPlugEmbeddings
from langchain_modelplug.fallback import FallbackChatModel
from langchain_modelplug.llms import ModelPlugLLM

__all__ = [
    "ChatModelPlug",
    "ConfigurableChatModel",
    "FallbackChatModel",
    "ModelPlugEmbeddings",
    "ModelPlugLLM",
    "chat_model",
]

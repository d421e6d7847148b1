"""LangChain integration for modelplug: chat models, text LLMs, embeddings and fallbacks over
every modelplug backend, and image/audio generation Runnables."""

from langchain_modelplug.chat_models import ChatModelPlug
from langchain_modelplug.configurable import ConfigurableChatModel, chat_model
from langchain_modelplug.embeddings import ModelPlugEmbeddings
from langchain_modelplug.fallback import FallbackChatModel
from langchain_modelplug.llms import ModelPlugLLM
from langchain_modelplug.media import AudioModelPlug, ImageModelPlug
from langchain_modelplug.usage import UsageCostHandler

__all__ = [
    "AudioModelPlug",
    "ChatModelPlug",
    "ConfigurableChatModel",
    "FallbackChatModel",
    "ImageModelPlug",
    "ModelPlugEmbeddings",
    "ModelPlugLLM",
    "UsageCostHandler",
    "chat_model",
]

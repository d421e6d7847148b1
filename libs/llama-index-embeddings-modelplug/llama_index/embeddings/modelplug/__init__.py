"""LlamaIndex embeddings for every modelplug backend: ``ModelPlugEmbedding``."""

from llama_index.embeddings.modelplug.base import ModelPlugEmbedding

__all__ = ["ModelPlugEmbedding"]

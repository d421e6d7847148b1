"""LlamaIndex llms for modelplug. The integration classes land with the LlamaIndex issue."""

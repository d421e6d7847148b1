"""modelplug: one registry of LLM backends behind neutral request/response types.

Importing this package imports no SDK and no ML runtime; each loads when its provider is first
used.
"""

from modelplug.backends import Backend, create_backend
from modelplug.catalog import (
    AnthropicModel,
    GeminiModel,
    HFModel,
    LlamaCppModel,
    ModelInfo,
    OllamaModel,
    OpenAIModel,
    VLLMModel,
)
from modelplug.catalog.media import GeminiImageModel, HFAudioModel, HFImageModel
from modelplug.errors import (
    AmbiguousModelError,
    AuthenticationError,
    BadRequestError,
    CircuitOpenError,
    ConfigurationError,
    ContextOverflowError,
    FallbackExhaustedError,
    MissingDependencyError,
    ModelNotFoundError,
    ModelPlugError,
    OutputTruncatedError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
    RefusalError,
    SettingError,
    StreamInterruptedError,
    UnknownModelError,
    UnknownProviderError,
    UnsupportedCapabilityError,
    UnsupportedSchemaError,
)
from modelplug.local import available_models, default_model, resolve_model
from modelplug.media import AudioBackend, ImageBackend, create_audio_backend, create_image_backend
from modelplug.profile import Profile
from modelplug.registry import ProviderSpec, get_provider, installed_providers, providers
from modelplug.spec import ModelRef
from modelplug.types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from modelplug.weights import unload

__version__ = "0.1.0"

__all__ = [
    "AmbiguousModelError",
    "AnthropicModel",
    "AudioBackend",
    "AuthenticationError",
    "Backend",
    "BadRequestError",
    "ChatChunk",
    "ChatRequest",
    "ChatResponse",
    "CircuitOpenError",
    "CompletionRequest",
    "ConfigurationError",
    "ContextOverflowError",
    "FallbackExhaustedError",
    "GeminiImageModel",
    "GeminiModel",
    "HFAudioModel",
    "HFImageModel",
    "HFModel",
    "ImageBackend",
    "LlamaCppModel",
    "MissingDependencyError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelPlugError",
    "ModelRef",
    "OllamaModel",
    "OpenAIModel",
    "OutputTruncatedError",
    "Profile",
    "ProviderError",
    "ProviderSpec",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RateLimitError",
    "RefusalError",
    "SettingError",
    "StreamInterruptedError",
    "ToolCall",
    "ToolCallDelta",
    "UnknownModelError",
    "UnknownProviderError",
    "UnsupportedCapabilityError",
    "UnsupportedSchemaError",
    "Usage",
    "VLLMModel",
    "available_models",
    "create_audio_backend",
    "create_backend",
    "create_image_backend",
    "default_model",
    "get_provider",
    "installed_providers",
    "providers",
    "resolve_model",
    "unload",
]

"""In-process transformers models: ``hf:<hub id>`` or ``hf:<local folder>``.

The prompt is rendered with the model's own chat template (``tools=`` passed to it) and
tokenized once, in the caller's thread. Concurrent calls on one loaded model (threads, asyncio
tasks, ``batch``, a server's clients) are then decoded together by transformers' own continuous
batching, each with its own sampling settings, seed, stop sequences, budget, grammar constraint
(structured output, forced tool calls) and its own stream back to its caller; greedy answers are
the single answers within the batch's floating-point numerics. The few requests it cannot take
(image inputs, a request longer than the paged cache) run one batched,
left-padded ``model.generate`` under the model's lock while the batch waits paused.

Loading never downloads unless ``allow_download=True``, loads safetensors only and passes
``trust_remote_code`` only when the caller does. Weights live in :mod:`modelplug.weights`, shared
by every backend object naming the same model and load settings, with one batch per model.

The parts:

- :mod:`~modelplug.backends.hf.tool_formats`: the tool-call formats of chat templates (detect,
  parse);
- :mod:`~modelplug.backends.hf.loading`: locating the folder, the safetensors check, loading,
  the loaded model with its grammar compiler;
- :mod:`~modelplug.backends.hf.planning`: a request rendered, tokenized and budgeted (a plan);
- :mod:`~modelplug.backends.hf.batching`: continuous batching (transformers' manager, and the
  gaps closed around it: constraints, seeds, stop sequences, streams, queue, shutdown);
- :mod:`~modelplug.backends.hf.generation`: the locked path (one left-padded ``generate`` per
  batch, streamed for one row) and the output reading both paths share;
- :mod:`~modelplug.backends.hf.backend`: :class:`HFBackend`, the calls over those parts.

Importing this package imports no torch, transformers or llguidance.
"""

from modelplug.backends.hf.backend import HFBackend
from modelplug.backends.hf.tool_formats import (
    TOOL_CALL_FORMATS,
    detect_tool_call_format,
    parse_tool_calls,
)

__all__ = ["TOOL_CALL_FORMATS", "HFBackend", "detect_tool_call_format", "parse_tool_calls"]

"""Capability profiles: what a model can take and produce, from the catalog and runtime probes.

Field names follow LangChain's ``ModelProfile`` so adapters pass them on unchanged. ``None`` means
unknown; it is left out of :meth:`Profile.as_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from modelplug.spec import ModelRef


@dataclass(frozen=True)
class Profile:
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    tool_calling: bool | None = None
    tool_choice: bool | None = None
    tool_call_streaming: bool | None = None
    structured_output: bool | None = None
    image_inputs: bool | None = None
    reasoning_output: bool | None = None
    text_inputs: bool = True
    text_outputs: bool = True

    @classmethod
    def from_ref(cls, ref: ModelRef) -> Profile:
        """What the catalog (or the ``;flags`` of an ad-hoc model string) says."""
        return cls(
            max_input_tokens=ref.context_window,
            max_output_tokens=ref.max_output,
            tool_calling=ref.tools,
            tool_choice=ref.tools,
            tool_call_streaming=ref.tools,
            structured_output=ref.structured_output,
            image_inputs=ref.vision,
            reasoning_output=ref.thinking,
        )

    def merged(self, **probed: Any) -> Profile:
        """This profile with the probed values that are known (not None) taking precedence."""
        return replace(self, **{k: v for k, v in probed.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


PROFILE_FIELDS = tuple(f.name for f in fields(Profile))


@dataclass(frozen=True)
class GGUFInfo:
    """The few GGUF metadata keys profiles and templates need."""

    architecture: str | None
    name: str | None
    context_length: int | None
    chat_template: str | None
    #: The sampler settings the model's authors wrote into it (``general.sampling.*``), under
    #: llama-cpp-python's names (``temp``, ``top_k``, ``top_p``, ``min_p``, ``repeat_penalty``...).
    sampling: dict[str, float] = field(default_factory=dict, hash=False, compare=False)


#: GGUF ``general.sampling.<key>`` -> llama-cpp-python's sampler option.
_GGUF_SAMPLING = {"temp": "temp", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                  "penalty_repeat": "repeat_penalty", "mirostat": "mirostat_mode",
                  "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta"}


# GGUF value types -> struct format (strings and arrays are handled apart).
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
                 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@lru_cache(maxsize=64)
def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Read the GGUF header's metadata, never the tensors.

    A hand-rolled walk over the key/value section: llama.cpp's ``gguf.GGUFReader`` also parses
    every tensor and vocabulary entry (about 4 s for a 100 MB file), which model construction
    must not pay. Raises ValueError for a file that is not GGUF.
    """
    import mmap
    import struct

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (bad magic {bytes(buf[:4])!r}).")
        version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"{path} is GGUF version {version}; versions 2 and later are read.")
        pos, meta = 24, {}

        def read_string() -> str:
            nonlocal pos
            (length,) = struct.unpack_from("<Q", buf, pos)
            pos += 8 + length
            return buf[pos - length:pos].decode("utf-8", errors="replace")

        def read_value(vtype: int) -> Any:
            nonlocal pos
            if vtype == _GGUF_STRING:
                return read_string()
            if vtype == _GGUF_ARRAY:
                elem_type, count = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if elem_type in _GGUF_SCALARS:  # skip numeric arrays (token types, scores)
                    pos += count * struct.calcsize("<" + _GGUF_SCALARS[elem_type])
                elif elem_type == _GGUF_STRING:  # skip string arrays (the vocabulary)
                    for _ in range(count):
                        pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
                else:
                    for _ in range(count):
                        read_value(elem_type)
                return None
            fmt = "<" + _GGUF_SCALARS[vtype]
            (value,) = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return value

        for _ in range(n_kv):
            key = read_string()
            (vtype,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            meta[key] = read_value(vtype)

    arch = meta.get("general.architecture")
    ctx = meta.get(f"{arch}.context_length")
    return GGUFInfo(
        architecture=arch,
        name=meta.get("general.name"),
        context_length=int(ctx) if ctx is not None else None,
        chat_template=meta.get("tokenizer.chat_template"),
        sampling={option: meta[f"general.sampling.{key}"] for key, option in _GGUF_SAMPLING.items()
                  if isinstance(meta.get(f"general.sampling.{key}"), int | float)},
    )

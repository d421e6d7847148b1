"""Shared weights: peak RSS of two adapters on one in-process model vs one adapter.

Each variant is a fresh interpreter that imports everything first (its RSS then is the
baseline), builds the models, answers one short chat per adapter, and reports its peak RSS
(``ru_maxrss``). "Model RSS" is peak minus baseline: what loading and running the model cost.

- one adapter: ChatModelPlug on the model;
- two adapters: ChatModelPlug and LlamaIndex's ModelPlug on the same model (the process-wide
  weight cache should give both the same loaded copy);
- two separate loads (reference: what doubling looks like): two raw ``Llama(...)`` /
  ``from_pretrained`` copies, one call each.

For llama.cpp (SmolLM2-135M Q4_1 GGUF) and transformers (the same model converted to an fp32
safetensors folder, on CUDA when there is one: there RSS shows host memory only, and
``torch.cuda.max_memory_allocated`` is reported too).

Target (issue 4): two adapters on one model do not double peak RSS vs one: two adapters' model
RSS at most 1.2x one adapter's.

    python bench/shared_weights.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import json
import subprocess
import sys

from _report import ROOT, Table, median, parser

_PRELUDE = """
import json, resource, sys
sys.path.insert(0, {bench!r})
import torch, llama_cpp, transformers
from langchain_modelplug import ChatModelPlug
from llama_index.llms.modelplug import ModelPlug
from llama_index.core.llms import ChatMessage
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
HI = "Say hi."
"""

_REPORT = """
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
print(json.dumps({"base": base, "peak": peak, "gpu": gpu}))
"""

LLAMACPP = {
    "one adapter": """
a = ChatModelPlug(model="llamacpp:smollm2", max_tokens=4, temperature=0)
a.invoke(HI)
""",
    "two adapters": """
a = ChatModelPlug(model="llamacpp:smollm2", max_tokens=4, temperature=0)
b = ModelPlug(model="llamacpp:smollm2", max_tokens=4, temperature=0)
a.invoke(HI); b.chat([ChatMessage(role="user", content=HI)])
assert a.backend._loaded() is b.backend._loaded()
""",
    "two separate loads": """
from modelplug.local import models_dir
path = str(models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf")
for _ in range(2):
    llm = llama_cpp.Llama(model_path=path, n_ctx=8192, verbose=False)
    llm.create_chat_completion(messages=[{"role": "user", "content": HI}], max_tokens=4)
    globals().setdefault("keep", []).append(llm)
""",
}

HF = {
    "one adapter": """
from inprocess_hf import hf_folder
f = hf_folder()
a = ChatModelPlug(model=f"hf:{f}", max_tokens=4, temperature=0)
a.invoke(HI)
""",
    "two adapters": """
from inprocess_hf import hf_folder
f = hf_folder()
a = ChatModelPlug(model=f"hf:{f}", max_tokens=4, temperature=0)
b = ModelPlug(model=f"hf:{f}", max_tokens=4, temperature=0)
a.invoke(HI); b.chat([ChatMessage(role="user", content=HI)])
assert a.backend._loaded() is b.backend._loaded()
""",
    "two separate loads": """
from inprocess_hf import hf_folder
from transformers import AutoModelForCausalLM, AutoTokenizer
f = hf_folder()
dev = "cuda" if torch.cuda.is_available() else "cpu"
tok = AutoTokenizer.from_pretrained(f)
keep = []
for _ in range(2):
    m = AutoModelForCausalLM.from_pretrained(f, dtype=torch.float32 if dev == "cpu" else "auto",
                                             use_safetensors=True).to(dev)
    ids = tok.apply_chat_template([{"role": "user", "content": HI}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True).to(dev)
    with torch.inference_mode():
        m.generate(**ids, max_new_tokens=4, do_sample=False)
    keep.append(m)
""",
}


def sample(body: str) -> dict:
    code = _PRELUDE.format(bench=str(ROOT / "bench")) + body + _REPORT
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"variant failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.quick:
        args.repeats = 1

    import torch

    cuda = torch.cuda.is_available()
    table = Table(
        "Shared weights: peak RSS (bench/shared_weights.py)",
        "Peak RSS of a fresh process after one short chat per adapter; model RSS = peak minus "
        "the RSS after imports. Medians over fresh processes.",
        ["backend", "variant", "baseline MiB", "peak MiB", "model RSS MiB", "vs one adapter"]
        + (["CUDA peak MiB"] if cuda else []),
    )
    for backend, variants in (("llamacpp", LLAMACPP), ("hf", HF)):
        res: dict[str, dict[str, float]] = {}
        names = list(variants)
        samples: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                samples[name].append(sample(variants[name]))
        for name in names:
            s = samples[name]
            res[name] = {"base": median([x["base"] for x in s]),
                         "peak": median([x["peak"] for x in s]),
                         "model": median([x["peak"] - x["base"] for x in s]),
                         "gpu": median([x["gpu"] for x in s]) if cuda else 0.0}
            print(backend, name, {k: round(v) for k, v in res[name].items()}, flush=True)
        one = res["one adapter"]["model"]
        for name in names:
            row = [backend, name, res[name]["base"], res[name]["peak"], res[name]["model"],
                   f"{res[name]['model'] / one:.2f}x"]
            table.row(*row, *([res[name]["gpu"]] if cuda else []))
        ratio = res["two adapters"]["model"] / one
        table.check(f"{backend}: two adapters / one adapter (model RSS)", f"{ratio:.2f}x",
                    "<= 1.2x", ratio <= 1.2)
        if cuda and backend == "hf":
            g = res["two adapters"]["gpu"] / max(res["one adapter"]["gpu"], 1e-9)
            table.check("hf: two adapters / one adapter (CUDA peak)", f"{g:.2f}x", "<= 1.2x",
                        g <= 1.2)
    table.note(f"{args.repeats} fresh process(es) per variant, rotating order, medians. The "
               "llama.cpp GGUF is memory-mapped: its weights count in RSS as pages are touched.")
    table.device = "cuda (hf)" if cuda else "cpu"
    table.finish(args)


if __name__ == "__main__":
    main()

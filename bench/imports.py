"""Import and construction: langchain_modelplug vs langchain_openai (and litellm for reference).

Each sample is a fresh interpreter (``python -c``) that times its own import and construction
with ``time.perf_counter`` and reports its peak RSS (``resource.getrusage(...).ru_maxrss``); the
variants are run in a rotating order, several times each, and the table shows medians. The
interpreter's own start-up is the same for every variant and is not counted (the bare
``python -c pass`` RSS is shown as the floor).

- ``import langchain_modelplug`` then ``ChatModelPlug(model="vllm:bench-model", base_url=...)``
  (an OpenAI-compatible server: the openai SDK loads on the first call, not here);
- ``import langchain_openai`` then ``ChatOpenAI(model=..., base_url=..., api_key=...)``;
- ``import litellm`` (reference only; it has no model object). litellm pins ``openai<3`` and
  ``huggingface-hub<2``, which conflicts with this project's environment, so it is timed from
  its own virtual environment (``--litellm-python``, default
  ``~/.cache/modelplug/bench/litellm-venv/bin/python``) and skipped when that does not exist.

Target: langchain_modelplug import + construction no slower than langchain_openai's.

    python bench/imports.py [--quick] [--repeats 9]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _report import Table, median, parser

URL = "http://127.0.0.1:9/v1"  # never contacted: construction sends nothing

_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
{imp}
t1 = time.perf_counter()
{build}
t2 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
sdks = sorted(m for m in ("openai", "anthropic", "ollama", "torch", "transformers", "llama_cpp")
              if m in sys.modules)
print(json.dumps({{"import": (t1 - t0) * 1000, "total": (t2 - t0) * 1000, "rss": rss,
                  "sdks": sdks}}))
"""

VARIANTS = {
    "langchain_modelplug": (
        "import langchain_modelplug",
        f"m = langchain_modelplug.ChatModelPlug(model='vllm:bench-model', base_url={URL!r})"),
    "langchain_openai": (
        "import langchain_openai",
        f"m = langchain_openai.ChatOpenAI(model='bench-model', base_url={URL!r}, "
        "api_key='bench')"),
    "langchain_modelplug + openai SDK": (
        "import langchain_modelplug",
        f"m = langchain_modelplug.ChatModelPlug(model='vllm:bench-model', base_url={URL!r}); "
        "import openai"),
    "python -c pass": ("pass", "pass"),
}
LITELLM = ("import litellm", "pass")


def sample(python: str, imp: str, build: str) -> dict:
    out = subprocess.run([python, "-c", _CHILD.format(imp=imp, build=build)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--litellm-python", type=Path,
                   default=Path.home() / ".cache/modelplug/bench/litellm-venv/bin/python")
    args = p.parse_args()
    if args.quick:
        args.repeats = 3

    runs = {name: (sys.executable, *v) for name, v in VARIANTS.items()}
    if args.litellm_python.exists() and subprocess.run(
            [str(args.litellm_python), "-c", "import litellm"], capture_output=True).returncode == 0:
        runs["litellm (own venv)"] = (str(args.litellm_python), *LITELLM)
    for run in runs.values():  # warm the OS file cache: the first start is not compared
        sample(*run)

    names = list(runs)
    samples: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(sample(*runs[name]))
        print(f"round {r + 1}/{args.repeats}", flush=True)

    res = {n: {k: median([s[k] for s in v]) for k in ("import", "total", "rss")}
           for n, v in samples.items()}
    table = Table(
        "Import and construction (bench/imports.py)",
        "A fresh interpreter imports the package and constructs a chat model for an "
        "OpenAI-compatible server; wall time and peak RSS, medians over fresh processes.",
        ["variant", "import ms", "import + construct ms", "peak RSS MiB", "SDKs loaded"],
    )
    for n in names:
        sdks = ", ".join(samples[n][-1]["sdks"]) or "none"
        construct = res[n]["total"] if not n.startswith("litellm") else "n/a"
        table.row(n, res[n]["import"], construct, res[n]["rss"], sdks)
    ours, theirs = res["langchain_modelplug"], res["langchain_openai"]
    table.check("import + construct: ours / langchain_openai",
                f"{ours['total'] / theirs['total']:.2f}x", "<= 1.0x",
                ours["total"] <= theirs["total"])
    table.check("import only: ours / langchain_openai",
                f"{ours['import'] / theirs['import']:.2f}x", "<= 1.0x (reference)", None)
    table.check("peak RSS: ours / langchain_openai", f"{ours['rss'] / theirs['rss']:.2f}x",
                "reference", None)
    if "litellm (own venv)" in res:
        lite = res["litellm (own venv)"]
        table.check("import: ours / litellm", f"{ours['import'] / lite['import']:.2f}x",
                    "reference", None)
    else:
        table.note("litellm: skipped (no working venv at --litellm-python; it pins openai<3 "
                   "and huggingface-hub<2, so it is not installed into .venv).")
    table.note("'+ openai SDK': the SDK import ours defers to the first call, paid then "
               "(ChatOpenAI pays it at import).")
    table.note(f"{args.repeats} fresh processes per variant, rotating order, medians. "
               "'SDKs loaded': provider SDKs / torch / llama_cpp in sys.modules afterwards.")
    table.device = "cpu (fresh interpreters; no model)"
    table.finish(args)


if __name__ == "__main__":
    main()

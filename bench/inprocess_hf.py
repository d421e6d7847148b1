"""In-process transformers throughput: ChatModelPlug hf batch vs ChatHuggingFace vs raw generate.

One loaded copy of SmolLM2-135M-Instruct (the transformers folder the integration tests convert
from the GGUF; built here on first use), the same prompts, greedy, the same max_new_tokens:

- ChatModelPlug(model="hf:<folder>").batch(prompts): one left-padded batched generate;
- ChatHuggingFace(llm=HuggingFacePipeline(pipeline)).batch(prompts): LangChain's default batch
  (invoke per input in a thread pool) over a text-generation pipeline on the same model;
- raw ``model.generate`` on the chat-templated prompts, left-padded: the ceiling.

Tokens are generated tokens before the end token (ChatHuggingFace: its answers re-tokenized).
The alternatives run in a rotating order each round; the table shows medians over rounds. On a
CUDA machine the model is placed on the GPU and the batch grows (``--batch``, default 16 on CPU,
64 on CUDA). On CPU torch uses ``--threads`` (default 1: on a shared, busy CPU two threads
contending with other processes were 5x slower than one).

Targets (issue 4): batch at least 4x ChatHuggingFace and at least 0.9x raw batched generate.

    python bench/inprocess_hf.py [--quick] [--batch N] [--max-new-tokens 16] [--rounds 2]
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

from _report import ROOT, Table, median, parser

PROMPTS = [
    "What is the capital of France?", "What is 2+2?", "Name a color.", "Say hello.",
    "What is the capital of Italy?", "Name a fruit.", "What day comes after Monday?",
    "What is the opposite of hot?", "Name an animal.", "What is water made of?",
    "Name a planet.", "What is the largest ocean?", "Give me a word that rhymes with cat.",
    "What language is spoken in Spain?", "How many legs does a spider have?",
    "What color is the sky?",
]


def hf_folder() -> Path:
    """The SmolLM2 transformers folder, converted from the GGUF once per machine."""
    sys.path.insert(0, str(ROOT / "integration_tests"))
    from hf_model import convert_gguf_to_hf, smollm2_hf_dir

    from modelplug.local import models_dir

    gguf = models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        raise SystemExit(f"{gguf} is missing: run `make fetch-model` first.")
    return convert_gguf_to_hf(gguf, smollm2_hf_dir())


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model-dir", type=Path, default=None,
                   help="a transformers folder (default: the converted SmolLM2)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.max_new_tokens = 1, 8

    import torch

    cuda = torch.cuda.is_available()
    if args.threads and not cuda:
        torch.set_num_threads(args.threads)
    batch = args.batch or (64 if cuda else 16)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    folder = args.model_dir or hf_folder()
    n = args.max_new_tokens

    from langchain_modelplug import ChatModelPlug

    ours = ChatModelPlug(model=f"hf:{folder}", temperature=0, max_tokens=n)
    lm = ours.backend._loaded().model  # the one loaded copy, reused by every column
    model, tokenizer = lm.model, lm.tokenizer
    device = str(model.device)

    def run_ours() -> int:
        return sum(m.usage_metadata["output_tokens"] for m in ours.batch(prompts))

    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                              add_generation_prompt=True, tokenize=False)
                for q in prompts]
    enc = tokenizer(rendered, add_special_tokens=False, padding=True, padding_side="left",
                    return_tensors="pt").to(model.device)

    def run_raw() -> int:
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=n, do_sample=False,
                                 pad_token_id=lm.pad_id, eos_token_id=sorted(lm.eos_ids))
        tokens = 0
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            ends = [i for i, t in enumerate(row) if t in lm.eos_ids]
            tokens += ends[0] if ends else len(row)
        return tokens

    runs: dict[str, Any] = {"ChatModelPlug batch": run_ours, "raw batched generate": run_raw}
    if importlib.util.find_spec("langchain_huggingface") is not None:
        from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
        from transformers import pipeline

        pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, max_new_tokens=n,
                        do_sample=False, return_full_text=False)
        theirs = ChatHuggingFace(llm=HuggingFacePipeline(pipeline=pipe))

        def run_theirs() -> int:
            return sum(len(tokenizer(m.content, add_special_tokens=False)["input_ids"])
                       for m in theirs.batch(prompts))

        runs["ChatHuggingFace batch"] = run_theirs

    ours.batch(prompts[:2])  # warm-up
    run_raw()
    names = list(runs)
    rates: dict[str, list[float]] = {k: [] for k in names}
    cpu_rates: dict[str, list[float]] = {k: [] for k in names}
    tokens: dict[str, int] = {}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start, cpu = time.perf_counter(), time.process_time()
            tokens[name] = runs[name]()
            seconds = time.perf_counter() - start
            rates[name].append(tokens[name] / seconds)
            cpu_rates[name].append(tokens[name] / (time.process_time() - cpu))
            print(f"round {r + 1}: {name:22s} {tokens[name]:5d} tokens in {seconds:6.2f}s",
                  flush=True)
    rate = {k: median(v) for k, v in rates.items()}
    cpu_rate = {k: median(v) for k, v in cpu_rates.items()}

    table = Table(
        "In-process transformers throughput (bench/inprocess_hf.py)",
        f"batch({batch}) of chat prompts on one loaded SmolLM2-135M-Instruct (fp32), greedy, "
        f"max_new_tokens={n}; generated tokens per second of wall time.",
        ["alternative", "tokens", "tokens/s", "ChatModelPlug / this",
         "tokens per CPU-s", "ChatModelPlug / this (CPU)"],
    )
    ours_rate, ours_cpu = rate["ChatModelPlug batch"], cpu_rate["ChatModelPlug batch"]
    for name in names:
        table.row(name, tokens[name], rate[name], f"{ours_rate / rate[name]:.2f}x",
                  cpu_rate[name], f"{ours_cpu / cpu_rate[name]:.2f}x")
    ratio_raw = rate["ChatModelPlug batch"] / rate["raw batched generate"]
    table.check("batch / raw batched generate", f"{ratio_raw:.2f}x", ">= 0.9x", ratio_raw >= 0.9)
    if "ChatHuggingFace batch" in rate:
        ratio = rate["ChatModelPlug batch"] / rate["ChatHuggingFace batch"]
        table.check("batch / ChatHuggingFace batch", f"{ratio:.2f}x", ">= 4x", ratio >= 4)
        r_cpu = ours_cpu / cpu_rate["ChatHuggingFace batch"]
        table.check("batch / ChatHuggingFace batch, per CPU-second", f"{r_cpu:.2f}x",
                    "reference", None)
    else:
        table.note("ChatHuggingFace: skipped (pip install --no-deps langchain-huggingface).")
    threads = torch.get_num_threads()
    table.note("tokens per CPU-s: tokens over this process's CPU time (all threads): what "
               "each alternative costs, whatever else the machine was doing.")
    table.note(f"{args.rounds} rotating round(s), medians; torch {torch.__version__}, "
               f"{'CUDA' if cuda else f'{threads} CPU thread(s)'}.")
    table.device = device + (f" ({torch.cuda.get_device_name(0)})" if cuda else "")
    table.finish(args)


if __name__ == "__main__":
    main()

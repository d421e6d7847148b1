"""In-process llama.cpp throughput: ChatModelPlug vs raw llama-cpp-python vs ChatLlamaCpp.

One loaded ``Llama`` (SmolLM2-135M-Instruct Q4_1 GGUF), the same chat prompts one at a time,
greedy, the same max_tokens:

- ChatModelPlug(model="llamacpp:smollm2").invoke(prompt) (the chat template from the GGUF and
  modelplug's own generate loop);
- raw ``Llama.create_chat_completion(messages, temperature=0, max_tokens=n)``: the floor;
- langchain-community's ChatLlamaCpp(...).invoke(prompt), with its ``client`` set to the same
  ``Llama`` (its defaults would load a second copy with n_ctx=512, n_batch=8) and
  ``repeat_penalty=1.0`` (greedy like the others).

Tokens are the answer re-tokenized with the model's tokenizer, the same count for every column.
Sequential calls; the alternatives run in a rotating order each round; medians over rounds.
With a llama-cpp-python build that offloads to a GPU, every layer goes there (n_gpu_layers=-1).

Target (issue 4): ChatModelPlug at least 0.97x raw llama-cpp-python.

    python bench/inprocess_llamacpp.py [--quick] [--prompts 6] [--max-tokens 24] [--rounds 3]
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable

from _report import Table, median, parser

PROMPTS = [
    "What is the capital of France?", "Name three colors.", "Say hello in French.",
    "What is the opposite of hot?", "Name a planet.", "What is water made of?",
    "How many legs does a spider have?", "What color is the sky?",
    "Give me a word that rhymes with cat.", "What language is spoken in Spain?",
]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if args.quick:
        args.prompts, args.rounds = 4, 1
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    n = args.max_tokens

    import llama_cpp

    from langchain_modelplug import ChatModelPlug

    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    extra = {"n_gpu_layers": -1} if gpu else {}
    ours = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=n, **extra)
    llm = ours.backend._loaded().model  # the one loaded Llama, shared by every column

    def count(text: str) -> int:
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def run_ours() -> int:
        return sum(count(ours.invoke(q).content) for q in prompts)

    def run_raw() -> int:
        total = 0
        for q in prompts:
            r = llm.create_chat_completion(messages=[{"role": "user", "content": q}],
                                           temperature=0, max_tokens=n)
            total += count(r["choices"][0]["message"]["content"] or "")
        return total

    runs: dict[str, Callable[[], int]] = {"ChatModelPlug": run_ours,
                                          "raw llama-cpp-python": run_raw}
    if importlib.util.find_spec("langchain_community") is not None:
        from langchain_community.chat_models import ChatLlamaCpp

        theirs = ChatLlamaCpp(model_path=str(ours.backend.model_path), temperature=0,
                              max_tokens=n, repeat_penalty=1.0, n_ctx=64, verbose=False)
        theirs.client = llm  # the same Llama: the adapters differ, not the load settings

        def run_theirs() -> int:
            return sum(count(theirs.invoke(q).content) for q in prompts)

        runs["ChatLlamaCpp"] = run_theirs

    # Warm-up: one short answer through each path (ChatLlamaCpp's goes through the raw call).
    ours.invoke("Hi")
    llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    names = list(runs)
    rates: dict[str, list[float]] = {k: [] for k in names}
    tokens: dict[str, int] = {}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            tokens[name] = runs[name]()
            seconds = time.perf_counter() - start
            rates[name].append(tokens[name] / seconds)
            print(f"round {r + 1}: {name:22s} {tokens[name]:5d} tokens in {seconds:6.2f}s",
                  flush=True)
    rate = {k: median(v) for k, v in rates.items()}

    table = Table(
        "In-process llama.cpp throughput (bench/inprocess_llamacpp.py)",
        f"{len(prompts)} chat prompts one at a time on one loaded SmolLM2-135M-Instruct Q4_1 "
        f"GGUF, greedy, max_tokens={n}; answer tokens per second of wall time (prompt "
        "processing included).",
        ["alternative", "tokens", "tokens/s", "ChatModelPlug / this"],
    )
    for name in names:
        table.row(name, tokens[name], rate[name], f"{rate['ChatModelPlug'] / rate[name]:.3f}x")
    ratio = rate["ChatModelPlug"] / rate["raw llama-cpp-python"]
    table.check("ChatModelPlug / raw llama-cpp-python", f"{ratio:.3f}x", ">= 0.97x",
                ratio >= 0.97)
    if "ChatLlamaCpp" in rate:
        r2 = rate["ChatModelPlug"] / rate["ChatLlamaCpp"]
        table.check("ChatModelPlug / ChatLlamaCpp", f"{r2:.3f}x", "reference", None)
    table.note(f"{args.rounds} rotating round(s), medians; llama-cpp-python "
               f"{llama_cpp.__version__}, n_threads={llm.n_threads}, "
               f"{'all layers on the GPU' if gpu else 'CPU build (no GPU offload)'}.")
    table.device = "gpu (llama.cpp offload)" if gpu else "cpu"
    table.finish(args)


if __name__ == "__main__":
    main()

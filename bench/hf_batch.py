"""batch(16) tokens/s on one transformers model: ChatModelPlug (hf:) vs ChatHuggingFace vs raw.

Same weights (one loaded copy), same 16 prompts, greedy, same max_new_tokens:

- ChatModelPlug(model="hf:<folder>").batch(prompts): one left-padded generate;
- ChatHuggingFace(llm=HuggingFacePipeline(pipeline)).batch(prompts): LangChain's default batch;
- raw ``model.generate`` on the 16 chat-templated prompts, left-padded: the ceiling.

Tokens are the generated tokens before the end token. Run:

    python bench/hf_batch.py [--model-dir DIR] [--max-new-tokens 32] [--threads N]

DIR defaults to the folder the integration tests convert from the SmolLM2 GGUF
(~/.cache/modelplug/models/smollm2-hf). Needs ``pip install langchain-huggingface`` for the
ChatHuggingFace column (skipped when it is missing). A script, not a test: timings are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

PROMPTS = [
    "What is the capital of France?", "What is 2+2?", "Name a color.", "Say hello.",
    "What is the capital of Italy?", "Name a fruit.", "What day comes after Monday?",
    "What is the opposite of hot?", "Name an animal.", "What is water made of?",
    "Name a planet.", "What is the largest ocean?", "Give me a word that rhymes with cat.",
    "What language is spoken in Spain?", "How many legs does a spider have?",
    "What color is the sky?",
]


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path,
                        default=Path.home() / ".cache" / "modelplug" / "models" / "smollm2-hf")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 is fastest on a busy shared CPU)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from langchain_modelplug import ChatModelPlug

    n = args.max_new_tokens
    ours = ChatModelPlug(model=f"hf:{args.model_dir}", temperature=0, max_tokens=n)
    lm = ours.backend._loaded().model  # the one loaded copy, reused by every column
    model, tokenizer = lm.model, lm.tokenizer
    ours.batch(PROMPTS[:2])  # warm-up

    results: dict[str, float] = {}

    messages, seconds = _timed(lambda: ours.batch(PROMPTS))
    tokens = sum(m.usage_metadata["output_tokens"] for m in messages)
    results["ChatModelPlug hf batch"] = tokens / seconds
    print(f"ChatModelPlug hf:      {tokens:5d} tokens in {seconds:6.2f}s")

    # Raw batched generate: the same rendering and left padding, nothing around it.
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                              add_generation_prompt=True, tokenize=False)
                for p in PROMPTS]
    enc = tokenizer(rendered, add_special_tokens=False, padding=True, padding_side="left",
                    return_tensors="pt").to(model.device)

    def raw():
        with torch.inference_mode():
            return model.generate(**enc, max_new_tokens=n, do_sample=False,
                                  pad_token_id=lm.pad_id, eos_token_id=sorted(lm.eos_ids))

    out, seconds = _timed(raw)
    tokens = 0
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        ends = [i for i, t in enumerate(row) if t in lm.eos_ids]
        tokens += ends[0] if ends else len(row)
    results["raw generate"] = tokens / seconds
    print(f"raw batched generate:  {tokens:5d} tokens in {seconds:6.2f}s")

    if importlib.util.find_spec("langchain_huggingface") is None:
        print("ChatHuggingFace:       skipped (pip install langchain-huggingface)")
    else:
        from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
        from transformers import pipeline

        pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, max_new_tokens=n,
                        do_sample=False, return_full_text=False)
        theirs = ChatHuggingFace(llm=HuggingFacePipeline(pipeline=pipe))
        messages, seconds = _timed(lambda: theirs.batch(PROMPTS))
        tokens = sum(len(tokenizer(m.content, add_special_tokens=False)["input_ids"])
                     for m in messages)
        results["ChatHuggingFace batch"] = tokens / seconds
        print(f"ChatHuggingFace:       {tokens:5d} tokens in {seconds:6.2f}s")

    print()
    for name, rate in results.items():
        print(f"{name:26s} {rate:8.1f} tokens/s")
    ours_rate = results["ChatModelPlug hf batch"]
    print(f"\nhf / raw batched generate: {ours_rate / results['raw generate']:.2f}x "
          "(target >= 0.9x)")
    if "ChatHuggingFace batch" in results:
        print(f"hf / ChatHuggingFace:      {ours_rate / results['ChatHuggingFace batch']:.2f}x "
              "(target >= 4x)")


if __name__ == "__main__":
    main()

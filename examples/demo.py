"""modelplug demo: the embedded default model (SmolLM2-135M-Instruct, in-process through
llama.cpp) in a LangChain chain, a stream and an async call. No server, no API key."""

from __future__ import annotations

import asyncio
import time

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_modelplug import ChatModelPlug


def main() -> None:
    llm = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=64)
    print(f"model: {llm.model}  (context window {llm.profile['max_input_tokens']} tokens)\n")

    # 1. A chain: prompt | model | parser.
    chain = ChatPromptTemplate.from_messages(
        [("system", "You are a helpful assistant."),
         ("user", "What is the capital of {country}? Answer in one sentence.")]
    ) | llm | StrOutputParser()
    start = time.perf_counter()
    answer = chain.invoke({"country": "France"})
    print(f"[chain]  {answer}  ({time.perf_counter() - start:.2f}s, includes loading)")

    # 2. Streaming, token by token, with usage on the last chunk.
    print("[stream] ", end="", flush=True)
    full = None
    for chunk in llm.stream("Count from 1 to 5."):
        print(chunk.content, end="", flush=True)
        full = chunk if full is None else full + chunk
    print(f"\n         usage: {full.usage_metadata}")

    # 3. Async: two questions at once; the event loop stays free while the model works.
    async def ask_both() -> list[str]:
        replies = await asyncio.gather(
            llm.ainvoke("What is 2 + 2?"),
            llm.ainvoke("Name a primary colour."),
        )
        return [r.content for r in replies]

    for question, reply in zip(["What is 2 + 2?", "Name a primary colour."],
                               asyncio.run(ask_both()), strict=True):
        print(f"[async]  {question} -> {reply}")


if __name__ == "__main__":
    main()

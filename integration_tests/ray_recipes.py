"""App factories the Ray Serve tests deploy: each runs inside a replica (so the models it builds
load there), which imports this module by name (the tests put this folder on the replicas'
PYTHONPATH, as a user ships their own module with ``runtime_env``)."""

from __future__ import annotations

from typing import Any


def langserve_app() -> Any:
    """The docs' LangServe recipe: a prompt | ChatModelPlug chain behind ``add_routes``."""
    from fastapi import FastAPI
    from langchain_core.prompts import ChatPromptTemplate
    from langserve import add_routes

    from langchain_modelplug import ChatModelPlug

    llm = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=16, n_threads=1,
                        n_ctx=512)
    prompt = ChatPromptTemplate.from_messages([("user", "{question} Answer in one sentence.")])
    app = FastAPI()
    add_routes(app, prompt | llm, path="/chat")
    return app

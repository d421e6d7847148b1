"""App factories the Ray Serve tests deploy: each runs inside a replica (so the models it builds
load there), which imports this module by name (the tests put this folder on the replicas'
PYTHONPATH, as a user ships their own module with ``runtime_env``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

CASTLE = "The secret password of the blue castle is marmalade."
DOCS = [CASTLE, "Bananas are yellow fruits that grow in tropical countries.",
        "The Eiffel Tower is a wrought-iron tower in Paris, France."]


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


class Query(BaseModel):
    question: str


def llamaindex_app() -> Any:
    """A LlamaIndex query engine over DOCS behind one FastAPI route, ``POST /query``."""
    from fastapi import FastAPI
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.embeddings.modelplug import ModelPlugEmbedding
    from llama_index.llms.modelplug import ModelPlug

    settings = {"n_threads": 1, "n_ctx": 1024}  # the same, so both share one copy of the weights
    llm = ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=32, **settings)
    embed = ModelPlugEmbedding(model="llamacpp:smollm2", **settings)
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCS], embed_model=embed)
    engine = index.as_query_engine(llm=llm, similarity_top_k=1)
    app = FastAPI()

    @app.post("/query")
    async def query(body: Query) -> dict[str, Any]:
        response = await engine.aquery(body.question)
        return {"answer": str(response),
                "sources": [n.node.get_content() for n in response.source_nodes]}

    return app

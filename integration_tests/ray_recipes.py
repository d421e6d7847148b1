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


class ImageRequest(BaseModel):
    prompt: str
    n: int = 1
    size: str = "32x32"
    seed: int | None = None


def image_app(model: str) -> Any:
    """Image generation (a diffusers pipeline, in-process) behind ``POST
    /v1/images/generations`` in OpenAI's request and ``b64_json`` answer shapes."""
    import base64
    import time

    from fastapi import FastAPI

    from langchain_modelplug import ImageModelPlug

    draw = ImageModelPlug(model=model, num_inference_steps=2, format="bytes")
    app = FastAPI()

    @app.post("/v1/images/generations")
    async def generate(body: ImageRequest) -> dict[str, Any]:
        width, height = (int(v) for v in body.size.split("x"))
        images = await draw.ainvoke({"prompt": body.prompt, "num_images": body.n,
                                     "width": width, "height": height, "seed": body.seed})
        return {"created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(png).decode()} for png in images]}

    return app

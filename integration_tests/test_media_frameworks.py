"""Image and audio generation in the frameworks: LangChain Runnables (chains, batch, async,
tools, an agent that draws on the in-process SmolLM2) and LlamaIndex FunctionTools answering with
ImageBlocks / AudioBlocks. The models are the tiny random pipelines of media_models.py."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.prompts import PromptTemplate
from llama_index.core.base.llms.types import AudioBlock, ImageBlock
from llama_index.llms.modelplug import audio_tool, image_tool
from PIL import Image, ImageChops

from langchain_modelplug import AudioModelPlug, ChatModelPlug, ImageModelPlug

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def draw(tiny_sd_path: Path) -> ImageModelPlug:
    return ImageModelPlug(model=f"hf:{tiny_sd_path}", num_inference_steps=2, width=32,
                          height=32, seed=11)


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


# -- LangChain -----------------------------------------------------------------------------------


def test_image_runnable_takes_a_prompt_or_a_dict(draw: ImageModelPlug, tmp_path: Path) -> None:
    assert draw.generation == {"num_inference_steps": 2, "width": 32, "height": 32, "seed": 11}
    [image] = draw.invoke("a red cat")
    assert isinstance(image, Image.Image) and image.size == (32, 32)
    assert _same(image, draw.invoke("a red cat")[0])  # the default seed holds
    paths = draw.invoke({"prompt": "a red cat", "num_images": 2, "seed": 12, "format": "path",
                         "output_dir": str(tmp_path)})
    assert len(paths) == 2 and all(Path(p).parent == tmp_path for p in paths)
    assert not _same(image, Image.open(paths[0]).convert("RGB"))  # the per-call seed won


def test_output_dir_on_the_object_applies_to_path_output_only(tiny_sd_path: Path,
                                                             tmp_path: Path) -> None:
    from modelplug import ConfigurationError

    draw = ImageModelPlug(model=f"hf:{tiny_sd_path}", output_dir=str(tmp_path),
                          num_inference_steps=1, width=32, height=32)
    [image] = draw.invoke("a red cat")  # the default format (pil) writes nothing
    assert isinstance(image, Image.Image) and not list(tmp_path.iterdir())
    [path] = draw.invoke({"prompt": "a red cat", "format": "path"})
    assert Path(path).parent == tmp_path
    message = draw.as_tool().invoke({"type": "tool_call", "id": "call_1",
                                     "name": "generate_image", "args": {"prompt": "a cat"}})
    assert Path(message.artifact[0]).parent == tmp_path  # the tool writes there too
    other = tmp_path / "other"
    [path] = draw.invoke({"prompt": "a red cat", "format": "path", "output_dir": str(other)})
    assert Path(path).parent == other  # a per-call output_dir wins
    # A per-call output_dir with a format that writes nothing is still a mistake.
    with pytest.raises(ConfigurationError, match="output_dir= is where format='path' writes"):
        draw.invoke({"prompt": "a red cat", "output_dir": str(other)})


def test_image_runnable_in_a_chain_and_batched(draw: ImageModelPlug) -> None:
    chain = PromptTemplate.from_template("a photo of {thing}") | draw
    [from_chain] = chain.invoke({"thing": "a dog"})
    [direct] = draw.invoke("a photo of a dog")
    assert _same(from_chain, direct)
    results = draw.batch(["a dog", "a cat"])
    assert [len(r) for r in results] == [1, 1]


async def test_image_runnable_async(draw: ImageModelPlug) -> None:
    [url] = await draw.ainvoke({"prompt": "a cat", "format": "data_url"})
    assert url.startswith("data:image/png;base64,")


def test_image_tool_answers_with_paths_and_carries_the_images(draw: ImageModelPlug) -> None:
    tool = draw.as_tool()
    assert tool.name == "generate_image"
    assert set(tool.args) == {"prompt"}
    message = tool.invoke({"type": "tool_call", "id": "call_1", "name": tool.name,
                           "args": {"prompt": "a cat"}})
    assert isinstance(message, ToolMessage)
    [path] = message.artifact
    assert message.content == f"Generated 1 image file(s): {path}"
    assert Image.open(path).size == (32, 32)


def _first_turn_draws():
    """Agent middleware: the image tool is forced on the first turn and refused once it has
    answered (the 135M model does not reliably choose on its own; see test_fallback.py)."""
    from langchain.agents.middleware import wrap_model_call

    @wrap_model_call
    def force(request, handler):
        answered = any(isinstance(m, ToolMessage) for m in request.messages)
        return handler(request.override(tool_choice="none" if answered else "generate_image"))

    return force


def test_a_langchain_agent_draws(draw: ImageModelPlug, tmp_path: Path) -> None:
    from langchain.agents import create_agent

    chat = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=64, n_threads=1)
    tool = draw.as_tool()
    agent = create_agent(model=chat, tools=[tool], middleware=[_first_turn_draws()])
    result = agent.invoke({"messages": [HumanMessage("Draw a picture of a red cat.")]},
                          config={"recursion_limit": 6})
    messages = result["messages"]
    [call] = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    assert call["name"] == "generate_image"
    assert isinstance(call["args"]["prompt"], str) and call["args"]["prompt"]
    [tool_message] = [m for m in messages if isinstance(m, ToolMessage)]
    [path] = tool_message.artifact
    assert path in tool_message.content
    assert Image.open(path).size == (32, 32)
    assert isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls


def test_audio_runnable_and_tool(tiny_musicgen_path: Path) -> None:
    music = AudioModelPlug(model=f"hf:{tiny_musicgen_path}", duration_s=0.25, seed=3)
    [clip] = music.invoke("calm piano")
    assert clip.ndim == 1 and music.sample_rate == 800
    [wav] = music.invoke({"prompt": "calm piano", "format": "bytes"})
    assert wav[:4] == b"RIFF"
    message = music.as_tool().invoke({"type": "tool_call", "id": "call_2",
                                      "name": "generate_audio", "args": {"prompt": "drums"}})
    [path] = message.artifact
    assert path.endswith(".wav") and path in message.content


def test_runnable_settings_are_checked(tiny_sd_path: Path) -> None:
    with pytest.raises(TypeError, match="n_ctx"):
        ImageModelPlug(model=f"hf:{tiny_sd_path}", n_ctx=4)
    with pytest.raises(ValueError, match="format must be 'path' or 'data_url'"):
        ImageModelPlug(model=f"hf:{tiny_sd_path}").as_tool(format="pil")


def test_catalog_members_name_media_models() -> None:
    from modelplug.catalog.media import GeminiImageModel, HFAudioModel

    draw = ImageModelPlug(model=GeminiImageModel.GEMINI_2_5_FLASH_IMAGE, api_key="k")
    assert draw.model == "gemini:gemini-2.5-flash-image"  # text, so it serializes
    assert AudioModelPlug(model=HFAudioModel.MUSICGEN_SMALL,
                          allow_download=True).model == "hf:facebook/musicgen-small"
    with pytest.raises(ValueError, match="MUSICGEN_SMALL is an audio model; this needs an image"):
        ImageModelPlug(model=HFAudioModel.MUSICGEN_SMALL)


# -- LlamaIndex ----------------------------------------------------------------------------------


def test_llama_index_image_tool_returns_image_blocks(tiny_sd_path: Path) -> None:
    tool = image_tool(f"hf:{tiny_sd_path}", num_inference_steps=2, width=32, height=32, seed=5,
                      num_images=2)
    assert tool.metadata.name == "generate_image"
    output = tool.call(prompt="a cat")
    assert len(output.blocks) == 2 and all(isinstance(b, ImageBlock) for b in output.blocks)
    images = [Image.open(b.resolve_image()) for b in output.blocks]
    assert all(im.size == (32, 32) for im in images)
    assert output.blocks[0].image_mimetype == "image/png"


async def test_llama_index_tools_async(tiny_sd_path: Path, tiny_musicgen_path: Path) -> None:
    output = await image_tool(f"hf:{tiny_sd_path}", num_inference_steps=1, width=32,
                              height=32).acall(prompt="a cat")
    assert isinstance(output.blocks[0], ImageBlock)
    audio = await audio_tool(f"hf:{tiny_musicgen_path}", duration_s=0.25).acall(prompt="drums")
    [block] = audio.blocks
    assert isinstance(block, AudioBlock) and block.format == "wav"
    with wave.open(io.BytesIO(block.resolve_audio().read())) as reader:
        assert reader.getframerate() == 800 and reader.getnframes() > 0

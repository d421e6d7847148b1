"""Ray Serve: ``modelplug serve MODEL --ray`` and :func:`modelplug.serving_ray.serve_on_ray` on a
local Ray instance (started once for this file): two replicas of the in-process SmolLM2 GGUF,
one core each, called with the official openai SDK and ChatModelPlug; an image model (the tiny
diffusers pipeline) and an audio model (the tiny MusicGen) served by name; apps deployed with
the same builder (LangServe through RemoteRunnable, a LlamaIndex query engine); load spread,
autoscaling under load, a killed replica, and the errors a deployment can end in."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
import time
import wave
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fakes.server import free_port

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'modelplug[ray]'")

import ray
from ray import serve

from langchain_modelplug import ChatModelPlug
from modelplug.serving_ray import (
    REPLICA_HEADER,
    DeploymentFailedError,
    serve_on_ray,
)

HERE = Path(__file__).parent
SERVED = "llamacpp:smollm2"
PARIS = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
#: One llama.cpp thread per replica, a small KV cache: two replicas fit on the two cores.
SMALL = {"n_threads": 1, "n_ctx": 512}


@pytest.fixture(scope="session")
def ray_instance(tmp_path_factory) -> Iterator[None]:
    """One small local Ray for the whole run: two CPUs, no dashboard, a 200 MB object store;
    replicas find this folder's modules (ray_recipes) on their PYTHONPATH."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
             _temp_dir=str(tmp_path_factory.mktemp("ray")), log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}})
    yield
    serve.shutdown()
    ray.shutdown()


def start_cli(*args: str) -> tuple[subprocess.Popen, str]:
    """``modelplug serve ... --ray --address <this run's Ray>`` on Serve's port, up and
    healthy; returns the process and the base URL."""
    port = free_port()
    cli = subprocess.Popen(
        [sys.executable, "-m", "modelplug.cli", "serve", *args, "--ray", "--port", str(port),
         "--address", ray.get_runtime_context().gcs_address, "--replica-cpus", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = serve_http_root() or f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while not health_ok(f"{root}/health"):
        if cli.poll() is not None:
            pytest.fail(cli.communicate()[0])
        if time.monotonic() > deadline:
            cli.kill()
            pytest.fail(f"modelplug serve --ray did not come up: {cli.communicate()[0]}")
        time.sleep(1)
    return cli, root


def serve_http_root() -> str | None:
    """Serve's one HTTP address, if Serve already runs on this Ray (its first start set it; a
    later ``--port`` does not move it)."""
    from ray.serve.context import _get_global_client

    try:
        config = _get_global_client().http_config
    except Exception:  # Serve not started yet: the CLI's --port will be it
        return None
    return f"http://{config.host}:{config.port}"


def stop_cli(cli: subprocess.Popen) -> str:
    cli.terminate()  # SIGTERM
    output = cli.communicate(timeout=60)[0]
    assert cli.returncode == 0, output
    assert "modelplug" not in serve.status().applications  # removed on the way out
    return output


def test_cli_serves_on_a_cluster_until_sigterm(ray_instance) -> None:
    """``modelplug serve --ray --address --api-key`` joins this run's Ray (as it would a remote
    cluster), serves until SIGTERM, then removes its application. First in the file: it starts
    Serve's HTTP proxy on its own --port."""
    cli, root = start_cli(SERVED, "--api-key", "ray-test-key",
                          *(f"--set={k}={v}" for k, v in SMALL.items()))
    try:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key="ray-test-key", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model=SERVED, messages=PARIS, max_tokens=24, temperature=0)
        with pytest.raises(openai.AuthenticationError):  # the key reached the replicas
            client.with_options(api_key="wrong").models.list()
        assert "Paris" in raw.parse().choices[0].message.content
        assert raw.headers[REPLICA_HEADER].startswith("SERVE_REPLICA::modelplug#")
    finally:
        stop_cli(cli)


def test_cli_serves_an_image_model_by_name(ray_instance, tiny_sd_path: Path) -> None:
    """``modelplug serve hf:<diffusers folder> --modality image --ray``: the replica loads the
    pipeline and answers the openai SDK's ``images.generate`` (one denoising step, the -s
    generation default)."""
    from PIL import Image

    cli, root = start_cli(f"hf:{tiny_sd_path}", "--modality", "image",
                          "--set", "num_inference_steps=1")
    try:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key="unused", max_retries=0)
        raw = client.images.with_raw_response.generate(prompt="a red cat", n=2, size="32x32",
                                                       extra_body={"seed": 1})
        images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json)))
                  for d in raw.parse().data]
        assert [im.size for im in images] == [(32, 32), (32, 32)]
        assert raw.headers[REPLICA_HEADER].startswith("SERVE_REPLICA::modelplug#")
        assert [m.id for m in client.models.list().data] == [f"hf:{tiny_sd_path}"]
    finally:
        stop_cli(cli)


def test_cli_reports_a_media_model_that_cannot_load(ray_instance, tmp_path) -> None:
    """``modelplug serve --modality image --ray`` with a folder that does not exist: an error
    naming the model and the replica's error (after Ray's own log lines), exit 1, and no
    application left behind."""
    model = f"hf:{tmp_path / 'no-such-pipeline'}"
    done = subprocess.run(
        [sys.executable, "-m", "modelplug.cli", "serve", model, "--modality", "image", "--ray",
         "--address", ray.get_runtime_context().gcs_address, "--replica-cpus", "0",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 1, done.stdout + done.stderr
    error = " ".join(done.stderr.split())
    assert f"error: The replicas of 'modelplug' serving {model} failed to start: " \
           "modelplug.errors.ModelNotFoundError: Model folder" in error, error
    assert "modelplug" not in serve.status().applications


def health_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def url(ray_instance) -> Iterator[str]:
    """Two replicas of SmolLM2, one CPU each."""
    base = serve_on_ray(SERVED, port=free_port(), blocking=False, num_replicas=2,
                        ray_actor_options={"num_cpus": 1}, **SMALL)
    yield f"{base}/v1"
    serve.delete("modelplug")


def ask(client: openai.AsyncOpenAI, i: int = 0, max_tokens: int = 8) -> object:
    return client.chat.completions.with_raw_response.create(
        model=SERVED, messages=[{"role": "user", "content": f"Name a colour. ({i})"}],
        max_tokens=max_tokens, temperature=0)


def test_openai_sdk_answers_and_names_the_replica(url: str) -> None:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=SERVED, messages=PARIS,
                                                          max_tokens=24, temperature=0)
    completion = raw.parse()
    assert "Paris" in completion.choices[0].message.content
    assert completion.usage.completion_tokens > 0 and completion.model == SERVED
    assert raw.headers[REPLICA_HEADER].startswith("SERVE_REPLICA::modelplug#modelplug#")
    chunks = list(client.chat.completions.create(model=SERVED, messages=PARIS, max_tokens=24,
                                                 temperature=0, stream=True))
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [m.id for m in client.models.list().data] == [SERVED]


def test_chat_model_plug_through_ray(url: str) -> None:
    remote = ChatModelPlug(model=f"llamaserver:{SERVED}", base_url=url, temperature=0,
                           max_tokens=24)
    answer = remote.invoke("What is the capital of France? Answer in one sentence.")
    assert "Paris" in answer.content
    assert answer.usage_metadata["output_tokens"] > 0


def test_64_concurrent_requests_all_answered_on_both_replicas(url: str) -> None:
    async def run() -> list:
        async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0,
                                      timeout=120) as client:
            return await asyncio.gather(*(ask(client, i) for i in range(64)))

    responses = asyncio.run(run())
    assert all(r.parse().choices[0].message.content for r in responses)
    replicas = Counter(r.headers[REPLICA_HEADER] for r in responses)
    assert len(replicas) == 2, replicas  # both served (Serve routes to the less busy one)
    assert min(replicas.values()) >= 8, replicas


def test_killed_replica_is_replaced_and_no_request_is_lost(url: str) -> None:
    """Serve answers 500 for the requests the dead replica held (it does not retry them) and
    routes the rest and the retries to the live one; the openai SDK's own retry (max_retries,
    2 by default) resends them, so every caller gets its answer. Serve then starts a new
    replica in the dead one's place."""
    statuses: list[int] = []

    async def note(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    async def run() -> tuple[str, list, set[str]]:
        http = httpx.AsyncClient(timeout=120, event_hooks={"response": [note]})
        async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=2,
                                      http_client=http) as client:
            victim = (await ask(client)).headers[REPLICA_HEADER]
            tasks = [asyncio.create_task(ask(client, i, max_tokens=32)) for i in range(16)]
            await asyncio.sleep(1.5)  # requests are generating on both replicas
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            answered = await asyncio.gather(*tasks)
            replaced = await wait_for_new_replica(client, victim)
            return victim, answered, replaced

    victim, answered, replaced = asyncio.run(run())
    assert len(answered) == 16
    assert 500 in statuses, statuses  # the kill did cut requests short; the retry answered them
    assert all(r.parse().choices[0].message.content for r in answered)
    assert victim not in replaced and len(replaced) == 2, (victim, replaced)


async def wait_for_new_replica(client: openai.AsyncOpenAI, victim: str) -> set[str]:
    """The replicas answering once Serve reports two running again."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = serve.status().applications["modelplug"].deployments["modelplug"]
        if status.replica_states.get("RUNNING", 0) == 2:
            seen: set[str] = set()
            for _ in range(4):
                batch = await asyncio.gather(*(ask(client, i) for i in range(8)))
                seen |= {r.headers[REPLICA_HEADER] for r in batch}
                if len(seen) == 2:
                    break
            return seen
        await asyncio.sleep(1)
    pytest.fail(f"Serve did not replace {victim} within 90 s: {serve.status()}")


def test_langserve_app_deployed_with_the_same_builder(url: str) -> None:
    import ray_recipes
    from langserve import RemoteRunnable

    base = serve_on_ray(app_factory=ray_recipes.langserve_app, name="langserve",
                        route_prefix="/lc", port=free_port(), blocking=False,
                        ray_actor_options={"num_cpus": 0})
    try:
        answer = RemoteRunnable(f"{base}/chat/").invoke(
            {"question": "What is the capital of France?"})
        assert "Paris" in answer.content
    finally:
        serve.delete("langserve")


def test_llamaindex_query_engine_deployed_with_the_same_builder(ray_instance) -> None:
    import ray_recipes

    base = serve_on_ray(app_factory=ray_recipes.llamaindex_app, name="llamaindex",
                        route_prefix="/li", port=free_port(), blocking=False,
                        ray_actor_options={"num_cpus": 0})
    try:
        response = httpx.post(f"{base}/query", timeout=120, json={
            "question": "What is the secret password of the blue castle?"})
        assert response.status_code == 200, response.text
        assert "marmalade" in response.json()["answer"].lower()
        assert response.json()["sources"] == [ray_recipes.CASTLE]
        assert REPLICA_HEADER in response.headers
    finally:
        serve.delete("llamaindex")


def test_audio_model_served_by_name(ray_instance, tiny_musicgen_path: Path) -> None:
    """The tiny MusicGen as an audio model on Ray Serve: ``audio.speech`` through the openai
    SDK gets the replica's WAV (the same seed, the same clip; another seed, another clip)."""
    base = serve_on_ray(f"hf:{tiny_musicgen_path}", modality="audio", duration_s=0.25,
                        name="audio", route_prefix="/audio", port=free_port(), blocking=False,
                        ray_actor_options={"num_cpus": 0})
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

        def speak(seed: int):
            return client.audio.speech.with_raw_response.create(
                model="m", voice="alloy", input="calm piano", response_format="wav",
                extra_body={"seed": seed})

        first, again, other = speak(1), speak(1), speak(2)
        assert first.headers[REPLICA_HEADER].startswith("SERVE_REPLICA::audio#audio#")
        assert first.headers["content-type"] == "audio/wav"
        clips = [r.parse().content for r in (first, again, other)]
        with wave.open(io.BytesIO(clips[0])) as reader:
            assert reader.getframerate() == 800 and reader.getnframes() > 0
        assert clips[0] == clips[1] != clips[2]
    finally:
        serve.delete("audio")


def test_autoscaling_adds_a_replica_under_load(ray_instance) -> None:
    """min 1, max 2 replicas, a target of one request in flight per replica, metrics every
    0.5 s and a 1 s upscale delay: 8 clients asking in a loop make Serve start the second
    replica, and both answer."""
    config = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
              "upscale_delay_s": 1, "downscale_delay_s": 600, "metrics_interval_s": 0.5,
              "look_back_period_s": 2}
    base = serve_on_ray(SERVED, autoscaling_config=config, name="autoscale",
                        route_prefix="/autoscale", port=free_port(), blocking=False,
                        ray_actor_options={"num_cpus": 0}, **SMALL)

    def running() -> int:
        status = serve.status().applications["autoscale"].deployments["autoscale"]
        return status.replica_states.get("RUNNING", 0)

    try:
        assert running() == 1  # min_replicas, before any load
        seen: Counter[str] = Counter()

        async def client_loop(client: openai.AsyncOpenAI, deadline: float) -> None:
            while len(seen) < 2 and time.monotonic() < deadline:
                seen[(await ask(client, len(seen), max_tokens=16)).headers[REPLICA_HEADER]] += 1

        async def load() -> None:
            deadline = time.monotonic() + 60
            async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused",
                                          max_retries=0, timeout=120) as client:
                await asyncio.gather(*(client_loop(client, deadline) for _ in range(8)))

        started = time.monotonic()
        asyncio.run(load())
        assert len(seen) == 2, (seen, serve.status().applications["autoscale"])
        assert running() == 2
        print(f"autoscaled to 2 replicas in {time.monotonic() - started:.1f} s: {seen}")
    finally:
        serve.delete("autoscale")


def test_a_replica_that_cannot_load_fails_the_deployment(ray_instance, tmp_path) -> None:
    missing = tmp_path / "missing.gguf"
    with pytest.raises(DeploymentFailedError, match="ModelNotFoundError") as caught:
        serve_on_ray(SERVED, model_path=str(missing), name="broken", route_prefix="/broken",
                     port=free_port(), blocking=False, ray_actor_options={"num_cpus": 0})
    first = str(caught.value).splitlines()[0]
    assert str(missing) in first and f"serving {SERVED}" in first
    assert "broken" not in serve.status().applications  # removed, not left crash-looping


def test_cli_names_an_unreachable_cluster() -> None:
    address = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "modelplug.cli", "serve", SERVED, "--ray", "--address", address],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode != 0
    assert address in done.stderr + done.stdout
    assert "Ray cluster" in done.stderr + done.stdout

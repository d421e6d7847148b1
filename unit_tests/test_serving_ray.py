"""modelplug.serving_ray without a Ray cluster: what is checked before Ray is imported, the error
when Ray is missing, the replica header middleware and the deploy-failure message."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from modelplug.errors import ConfigurationError, MissingDependencyError
from modelplug.serving_ray import REPLICA_HEADER, ReplicaHeader, deploy_failure, ray_app


def test_importing_the_module_imports_no_ray() -> None:
    code = "import sys, modelplug.serving_ray; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_ray_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'modelplug\[ray\]'"):
        ray_app("llamacpp:smollm2")


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"num_replicas": 2, "autoscaling_config": {"max_replicas": 4}}, "not both"),
    ({"num_replicas": 0}, "num_replicas must be a positive int; got 0"),
    ({"num_replicas": True}, "got True"),
    ({"app_factory": lambda: None, "n_threads": 1}, "either a model"),
    ({"app_factory": "main:app"}, "'main:app'"),
])
def test_bad_options_are_refused_before_ray_is_needed(monkeypatch, kwargs, named) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    model = None if "app_factory" in kwargs else "llamacpp:smollm2"
    with pytest.raises(ConfigurationError, match=named):
        ray_app(model, **kwargs)


@pytest.mark.parametrize(("model", "settings", "error", "named"), [
    ("llamacp:smollm2", {}, "UnknownProviderError", "llamacp"),
    ("llamacpp:smollm2", {"n_thread": 1}, "SettingError", "n_thread"),
])
def test_a_wrong_model_or_setting_fails_before_anything_is_deployed(
        monkeypatch, model, settings, error, named) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # refused before Ray is needed
    with pytest.raises(ConfigurationError, match=named) as caught:
        ray_app(model, **settings)
    assert type(caught.value).__name__ == error


async def test_replica_header_names_the_replica_on_every_response() -> None:
    async def hello(_):
        return PlainTextResponse("hi", headers={"x-own": "kept"})

    app = ReplicaHeader(Starlette(routes=[Route("/", hello)]), "SERVE_REPLICA::a#b#c")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        found, missing = await client.get("/"), await client.get("/missing")
    assert found.text == "hi" and found.headers["x-own"] == "kept"  # the app's own kept
    assert missing.status_code == 404
    assert found.headers[REPLICA_HEADER] == missing.headers[REPLICA_HEADER] == "SERVE_REPLICA::a#b#c"


def test_deploy_failure_leads_with_the_replicas_error() -> None:
    status = ("Failed to update the deployments ['m'].\nm: The deployment failed to start 3 times "
              "in a row.\nTraceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
              "modelplug.errors.ModelNotFoundError: model_path '/x.gguf' does not exist.\n")
    message = deploy_failure("m", status)
    assert message.splitlines()[0] == ("The replicas of 'm' failed to start: modelplug.errors."
                                       "ModelNotFoundError: model_path '/x.gguf' does not exist.")
    assert status.strip() in message
    assert deploy_failure("m", status, "llamacpp:smollm2").startswith(
        "The replicas of 'm' serving llamacpp:smollm2 failed to start: modelplug.errors."
        "ModelNotFoundError: model_path '/x.gguf' does not exist.")


@pytest.mark.parametrize(("args", "named"), [
    (["--replicas", "2"], "add --ray"),
    (["--ray", "--autoscaling", "4:1"], "'4:1' is not MIN:MAX"),
    (["--ray", "--autoscaling", "two"], "'two' is not MIN:MAX"),
])
def test_cli_ray_options_are_checked_before_anything_starts(args, named) -> None:
    from typer.testing import CliRunner

    from modelplug.cli import app

    result = CliRunner().invoke(app, ["serve", "llamacpp:smollm2", *args],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert named in " ".join(result.output.split())


@pytest.mark.parametrize(("model", "kwargs", "named"), [
    ("hf:some/pipeline", {"modality": "image", "n_threads": 1}, "n_threads"),
    ("hf:some/pipeline", {"modality": "video"}, "'video'"),
    (None, {"modality": "audio"}, "no local default"),
    (None, {"modality": "image", "app_factory": lambda: None}, "either a model"),
])
def test_media_model_mistakes_are_refused_before_ray_is_needed(monkeypatch, model, kwargs,
                                                               named) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigurationError, match=named):
        ray_app(model, **kwargs)


def test_media_generation_defaults_pass_the_checks(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # so the checks passed if Ray is what's missing
    with pytest.raises(MissingDependencyError):
        ray_app("hf:some/pipeline", modality="image", num_inference_steps=2,
                torch_dtype="float32")
    with pytest.raises(MissingDependencyError):
        ray_app("hf:some/musicgen", modality="audio", duration_s=2.0)


def test_cli_ray_without_ray_names_the_extra(monkeypatch) -> None:
    from typer.testing import CliRunner

    from modelplug.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(app, ["serve", "llamacpp:smollm2", "--ray"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "pip install 'modelplug[ray]'" in " ".join(result.output.split())

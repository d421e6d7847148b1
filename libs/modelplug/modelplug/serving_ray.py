"""The OpenAI-compatible server (a chat, image or audio model), or any ASGI app (LangServe's
``add_routes``, a LlamaIndex query engine behind FastAPI), as Ray Serve replicas: ``modelplug
serve MODEL --ray``.

Ray Serve is the engine: it places replicas on the cluster's CPUs and GPUs, routes each HTTP
request to the least busy replica, autoscales and restarts replicas that die. Each replica
builds its app once, so an in-process model loads once per replica and batches its own
concurrent requests (:mod:`modelplug.scheduling`). Every response carries the replica that
answered in the ``x-modelplug-replica`` header (the replica's Ray actor name).

Ray is an optional extra (``pip install 'modelplug[ray]'``); nothing imports it until
:func:`ray_app` or :func:`serve_on_ray` is called.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from modelplug.errors import ConfigurationError, MissingDependencyError, ModelPlugError
from modelplug.media import MediaLike
from modelplug.spec import ModelLike

#: The response header naming the replica that answered.
REPLICA_HEADER = "x-modelplug-replica"
#: The Serve application's default name (``serve.status()``, ``serve.delete(name)``).
DEFAULT_APP_NAME = "modelplug"


class ClusterUnreachableError(ModelPlugError, ConnectionError):
    """The Ray cluster at the given address did not answer."""


class DeploymentFailedError(ModelPlugError, RuntimeError):
    """Ray Serve could not start the replicas, e.g. because the model would not load there. The
    message starts with the replica's own error."""


def import_serve() -> Any:
    """``ray.serve``, or an ImportError naming the extra to install."""
    try:
        from ray import serve
    except ImportError as exc:
        raise MissingDependencyError(
            "Serving on Ray needs Ray Serve, which is not installed. Install it with: "
            "pip install 'modelplug[ray]'") from exc
    return serve


def ray_app(model: ModelLike | MediaLike | None = None, *,
            app_factory: Callable[[], Any] | None = None, modality: str = "chat",
            num_replicas: int | None = None, autoscaling_config: dict[str, Any] | None = None,
            ray_actor_options: dict[str, Any] | None = None,
            deployment_options: dict[str, Any] | None = None, name: str = DEFAULT_APP_NAME,
            api_key: str | None = None, max_request_bytes: int | None = None,
            **settings: Any) -> Any:
    """A Ray Serve application (pass it to ``serve.run``) whose replicas each serve ``model``
    with the OpenAI-compatible app of ``modelplug serve``, or the ASGI app ``app_factory()``
    returns (a LangServe or any FastAPI app: the factory runs in each replica, so the models
    it builds load there).

    ``settings`` are the provider's settings (``model_path=``, ``n_threads=``, ...), as for
    :func:`modelplug.server.create_app`; ``modality="image"`` or ``"audio"`` serves an image or
    audio model (``"hf:<diffusers folder>"``) at ``/v1/images/generations`` or
    ``/v1/audio/speech``, its settings holding generation defaults too. Each replica loads the
    model when it starts, so one that cannot load fails the deployment (see
    :func:`serve_on_ray`) instead of its first request. ``api_key`` defaults to
    ``$MODELPLUG_SERVE_API_KEY`` where this is called.

    Serve's own options: ``num_replicas`` (default 1) or ``autoscaling_config`` (e.g.
    ``{"min_replicas": 1, "max_replicas": 4}``), ``ray_actor_options`` per replica (e.g.
    ``{"num_cpus": 1}`` or ``{"num_gpus": 1}``), and any other ``serve.deployment`` option in
    ``deployment_options`` (``max_ongoing_requests``, ``health_check_period_s``, ...).
    """
    if app_factory is not None and (model is not None or settings or api_key is not None
                                    or max_request_bytes is not None or modality != "chat"):
        raise ConfigurationError(
            "ray_app() takes either a model (with its modality, settings, api_key, "
            "max_request_bytes) or app_factory=, not both: the factory's app builds its own "
            "models.")
    if app_factory is not None and not callable(app_factory):
        raise ConfigurationError(f"app_factory must be a function returning an ASGI app (e.g. a "
                                 f"FastAPI app); got {app_factory!r}.")
    if num_replicas is not None and autoscaling_config is not None:
        raise ConfigurationError(
            f"Give num_replicas ({num_replicas!r}) or autoscaling_config "
            f"({autoscaling_config!r}), not both: with autoscaling Serve picks the number.")
    if num_replicas is not None and (isinstance(num_replicas, bool)
                                     or not isinstance(num_replicas, int) or num_replicas < 1):
        raise ConfigurationError(f"num_replicas must be a positive int; got {num_replicas!r}.")
    if app_factory is None:
        check_model(model, modality, settings)
    serve = import_serve()
    if app_factory is None:
        from modelplug.server import DEFAULT_MAX_REQUEST_BYTES, resolve_key

        # Resolved here: the replicas run in other processes, maybe on other machines.
        app_factory = OpenAIApp(model, resolve_key(api_key), DEFAULT_MAX_REQUEST_BYTES
                                if max_request_bytes is None else max_request_bytes, settings,
                                modality)
    options: dict[str, Any] = dict(deployment_options or {})
    options["name"] = name
    if num_replicas is not None:
        options["num_replicas"] = num_replicas
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
    if ray_actor_options is not None:
        options["ray_actor_options"] = ray_actor_options
    replica_app = ReplicaApp(app_factory)

    def build() -> Any:  # serve.ingress's builder form takes a function; Serve calls it in
        return replica_app()  # each replica, as the replica starts

    return serve.deployment(serve.ingress(build)(), **options).bind()


def check_model(model: Any, modality: str, settings: dict[str, Any]) -> None:
    """A wrong model string, modality or setting fails where :func:`ray_app` is called, not as
    replicas that never start (the file, weights and local default are the replicas' business:
    they may be on other machines)."""
    from modelplug.registry import check_kwargs
    from modelplug.server import media_modality

    kind = media_modality(model, modality)
    given = {k: v for k, v in settings.items() if v is not None}
    if kind is None:
        if model is not None:
            from modelplug.local import resolve_model

            check_kwargs(resolve_model(model).spec, given)
        return
    from modelplug.media import resolve_media_model, split_generation_kwargs

    provider = split_generation_kwargs(kind, model, given)[1]  # type: ignore[arg-type]
    check_kwargs(resolve_media_model(kind, model).spec, provider,  # type: ignore[arg-type]
                 standard=())


class OpenAIApp:
    """What a replica of the OpenAI-compatible server runs: the backend, loaded now, behind
    :func:`modelplug.server.create_app`. A class, not a closure, so it pickles by reference."""

    def __init__(self, model: ModelLike | MediaLike | None, api_key: str,
                 max_request_bytes: int, settings: dict[str, Any],
                 modality: str = "chat") -> None:
        self.model, self.api_key, self.modality = model, api_key, modality
        self.max_request_bytes, self.settings = max_request_bytes, settings

    def __repr__(self) -> str:  # the key stays out of Ray's logs and error messages
        return (f"OpenAIApp({self.model!r}, modality={self.modality!r}, "
                f"settings={self.settings!r})")

    def __call__(self) -> Any:
        from modelplug.server import create_app

        app = create_app(self.model, api_key=self.api_key, modality=self.modality,
                         max_request_bytes=self.max_request_bytes, **self.settings)
        app.state.backend.load()
        return app


class ReplicaApp:
    """Builds the app in a replica and names the replica on every response."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory

    def __call__(self) -> Any:
        from ray import serve

        replica = serve.get_replica_context().replica_id.to_full_id_str()
        app = self.factory()
        if hasattr(app, "add_middleware"):  # Starlette/FastAPI: Serve still sees the app itself
            app.add_middleware(ReplicaHeader, replica=replica)
            return app
        return ReplicaHeader(app, replica)


class ReplicaHeader:
    """ASGI middleware adding ``x-modelplug-replica: <replica>`` to every HTTP response."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_named)


def serve_on_ray(model: ModelLike | MediaLike | None = None, *, modality: str = "chat",
                 address: str | None = None,
                 host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 insecure_no_api_key: bool = False, blocking: bool = True,
                 name: str = DEFAULT_APP_NAME, route_prefix: str = "/",
                 ray_init_options: dict[str, Any] | None = None,
                 num_replicas: int | None = None,
                 autoscaling_config: dict[str, Any] | None = None,
                 ray_actor_options: dict[str, Any] | None = None,
                 deployment_options: dict[str, Any] | None = None,
                 max_request_bytes: int | None = None, start_timeout_s: float = 600,
                 **settings: Any) -> str:
    """Deploy :func:`ray_app` on Ray Serve and serve it at ``http://host:port/v1`` (under
    ``route_prefix``: several applications share Serve's one HTTP address).

    ``address``: an existing cluster (``"HOST:6379"``, ``"ray://HOST:10001"``, ``"auto"``);
    without it, the Ray instance this process already joined, else a new local one
    (``ray_init_options`` go to ``ray.init``). Returns once every replica is up (the base
    URL) unless ``blocking``: then it serves until Ctrl-C or SIGTERM and removes the application.
    A deployment whose replicas fail to start (a model that will not load), or are not all up
    within ``start_timeout_s`` (e.g. no node has the CPUs or GPUs they ask for), is removed and
    raises :class:`DeploymentFailedError` with the replica's error; an unreachable cluster raises
    :class:`ClusterUnreachableError`. ``host``/``port`` and the API key follow
    :func:`modelplug.server.serve` (a non-loopback host needs a key); on a cluster where Serve
    already runs, its HTTP address stays as it is.
    """
    from modelplug.server import check_bind, resolve_key

    check_bind(host, resolve_key(api_key), insecure_no_api_key)
    serve = import_serve()
    application = ray_app(model, modality=modality, num_replicas=num_replicas,
                          autoscaling_config=autoscaling_config,
                          ray_actor_options=ray_actor_options,
                          deployment_options=deployment_options, name=name, api_key=api_key,
                          max_request_bytes=max_request_bytes, **settings)
    connect(address, ray_init_options)
    serve.start(http_options={"host": host, "port": port})
    # Started without waiting, so a deployment that cannot start is removed, not left retrying.
    serve.run_many([serve.RunTarget(application, name=name, route_prefix=route_prefix)],
                   wait_for_ingress_deployment_creation=False,
                   wait_for_applications_running=False)
    wait_until_running(serve, name, start_timeout_s, None if model is None else str(model))
    url = f"{serve_root(host, port)}{route_prefix.rstrip('/')}"
    if not blocking:
        return url
    stop_on_sigterm()
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(name)
    return url


def serve_root(host: str, port: int) -> str:
    """Where Serve's proxies listen: its HTTP address is set once per cluster, by the first
    ``serve.start``, so a later deployment's ``host``/``port`` may not be it."""
    try:
        from ray.serve.context import _get_global_client

        config = _get_global_client().http_config
        host, port = config.host, config.port
    except Exception:  # a Ray without this internal: what was asked for
        pass
    return f"http://{host}:{port}"


def connect(address: str | None, init_options: dict[str, Any] | None = None) -> None:
    """Join the cluster at ``address`` (checked first, so a wrong one fails in seconds with its
    name), the Ray instance this process already joined, or a new local one."""
    import ray

    if ray.is_initialized():
        return
    if address and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), 5).close()
        except (OSError, ValueError) as exc:
            raise ClusterUnreachableError(
                f"Cannot reach the Ray cluster at {address!r} ({exc}). Check the address: "
                "HOST:6379 (the head node's GCS port) or ray://HOST:10001 (Ray Client); start a "
                "cluster with `ray start --head`, or leave the address out to start Ray on "
                "this machine.") from None
    try:
        ray.init(address=address, **(init_options or {}))
    except ConnectionError as exc:
        raise ClusterUnreachableError(f"Cannot join the Ray cluster at {address!r}: {exc}") \
            from exc


def wait_until_running(serve: Any, name: str, timeout_s: float, model: str | None = None) -> None:
    """Wait for application ``name`` (serving ``model``) to run; if it fails or times out,
    remove it and raise."""
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        state = app.status if app is not None else None
        if state == ApplicationStatus.RUNNING:
            return
        failed = state in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY)
        if failed or time.monotonic() > deadline:
            report = app.message if app is not None else ""
            if app is not None:
                report = "\n".join([report, *(f"{d}: {info.message}" for d, info
                                              in app.deployments.items() if info.message)])
            serve.delete(name)
            if not failed:  # most often replicas wait for CPUs or GPUs no node has free
                import ray

                report = (f"not running after {timeout_s:g} s; the cluster's free resources: "
                          f"{ray.available_resources()} (compare ray_actor_options). {report}")
            raise DeploymentFailedError(deploy_failure(name, report.strip(), model))
        time.sleep(0.5)


def deploy_failure(name: str, status: str, model: str | None = None) -> str:
    """Serve's DEPLOY_FAILED message, led by the model and the replica's own error (the
    traceback's last ``Type: message`` line)."""
    lines = [line.strip() for line in status.splitlines()]
    cause = next((line for line in reversed(lines) if ":" in line
                  and line.split(":", 1)[0].rsplit(".", 1)[-1].split("(")[0].endswith(
                      ("Error", "Exception"))), None)
    what = f"The replicas of {name!r}" + (f" serving {model}" if model else "")
    lead = f"{what} failed to start: {cause}" if cause else f"{what} failed to start."
    return f"{lead}\n\nRay Serve reported: {status}"


def stop_on_sigterm() -> None:
    """SIGTERM stops a blocking serve as Ctrl-C does (the application is removed)."""
    import signal
    import threading

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


__all__ = ["REPLICA_HEADER", "ClusterUnreachableError", "DeploymentFailedError", "ray_app",
           "serve_on_ray"]

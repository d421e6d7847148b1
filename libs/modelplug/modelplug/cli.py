"""The ``modelplug`` command: ``list``, ``run MODEL PROMPT``, ``chat MODEL``, ``serve MODEL``,
``health MODEL...``.

Installed with ``pip install 'modelplug[cli]'`` (``[serve]`` adds the server's fastapi and
uvicorn). Importing :mod:`modelplug` does not import this module.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Annotated, Any, TypeVar

from modelplug.errors import MissingDependencyError, ModelPlugError, SettingError

try:
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "The modelplug command needs typer and rich. Install them with: "
        "pip install 'modelplug[cli]'") from exc

from modelplug import catalog
from modelplug.accounting import cost_of
from modelplug.backends import Backend, create_backend
from modelplug.backends.base import DEFAULT_MAX_TOKENS, collect_stream
from modelplug.local import available_models, default_model, resolve_model
from modelplug.profile import Profile
from modelplug.registry import providers
from modelplug.spec import ModelRef
from modelplug.types import ChatChunk, ChatRequest, ChatResponse, Message

app = typer.Typer(help="One registry of LLM backends: list, run, chat with and serve any model.",
                  no_args_is_help=True, add_completion=False)
console = Console(highlight=False)
#: Notes beside the answer (why it stopped, which model was picked): stderr, so that a piped
#: answer stays only the answer.
notes = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

MODEL_HELP = ("'provider:model_id', e.g. 'llamacpp:smollm2' or 'ollama:qwen3:8b'. Default: "
              "$MODELPLUG_MODEL, else the first model available locally (see `modelplug list`).")
Model = Annotated[str, typer.Argument(help="'provider:model_id', e.g. 'llamacpp:smollm2' or "
                                      "'ollama:qwen3:8b'.")]
OptionalModel = Annotated[str | None, typer.Argument(help=MODEL_HELP, show_default=False)]
Settings = Annotated[list[str] | None, typer.Option(
    "--set", "-s", metavar="KEY=VALUE",
    help="A provider setting, repeatable: -s model_path=/m/x.gguf -s n_ctx=4096 "
         "(values are parsed as JSON when they can be). Default: none.")]
MaxTokens = Annotated[int | None, typer.Option(
    help=f"Most tokens to generate per answer. Default: for in-process models (llamacpp, hf) the "
         f"model's generation config (hf generation_config.json max_new_tokens), else "
         f"{DEFAULT_MAX_TOKENS}; for servers and clouds, their own.", show_default=False)]
Temperature = Annotated[float | None, typer.Option(
    help="Sampling temperature (0: greedy). Default: the model's own (GGUF general.sampling "
         "metadata, hf generation_config.json), else llama.cpp's 0.8 (llamacpp), greedy (hf), "
         "or the server's or cloud's own.", show_default=False)]
System = Annotated[str | None, typer.Option(help="A system prompt. Default: none.",
                                            show_default=False)]


@app.callback()
def main_options(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show modelplug's INFO log (which model was picked, and from "
                                "where) and the in-process runtimes' own output (llama.cpp "
                                "load messages, hf progress bars). Default: quiet.")] = False
                 ) -> None:
    """One registry of LLM backends: list, run, chat with and serve any model."""
    _verbose[0] = verbose
    if verbose:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        logging.getLogger("modelplug").setLevel(logging.INFO)


_verbose = [False]


def make_backend(model: str | None, settings: dict[str, Any]) -> Backend:
    """The backend for MODEL (the library's default when none is given; the pick is noted on
    stderr), verbose where -v asked for it and the provider has the setting."""
    if _verbose[0]:  # llama.cpp's own log (verbose), hf's loading bars (progress)
        spec = resolve_model(model).spec if model else default_model().spec
        settings = {**{name: True for name in ("verbose", "progress") if name in spec.kwargs},
                    **settings}
    backend = create_backend(model, **settings)
    if model is None:
        notes.print(f"[dim]Model: {backend.ref} (no MODEL given: $MODELPLUG_MODEL, else the "
                    "first model available locally).[/dim]")
    return backend


def note_finish(response: ChatResponse, max_tokens: int | None) -> None:
    """Say on stderr when the output budget, not the model, ended the answer."""
    if response.finish_reason == "length":
        budget = f"--max-tokens {max_tokens}" if max_tokens else "the default budget"
        notes.print(f"[dim](finish_reason: length: the answer was cut at {budget}; pass a "
                    "larger --max-tokens for a longer one.)[/dim]")


def note_usage(response: ChatResponse, ref: ModelRef, seconds: float) -> None:
    """Tokens, cost and time of the answer, on stderr (beside the answer, not in it)."""
    if response.usage is None:
        notes.print(f"[dim]({seconds:.2f} s; the provider reported no usage)[/dim]")
        return
    usage = response.usage
    cost = cost_of(usage, ref.provider, response.model or ref.model_id)
    price = f"${cost.total}" if cost.total is not None else f"cost unknown: {cost.reason}"
    notes.print(f"[dim]({usage.input_tokens} tokens in, {usage.output_tokens} out, "
                f"{escape(price)}, {seconds:.2f} s)[/dim]")


#: The standard parameters this command line has its own options for.
PARAM_OPTIONS = {"max_tokens": "--max-tokens", "temperature": "--temperature"}


def error_line(exc: ModelPlugError) -> str:
    """The error as one line, with the fix worded as this command line takes settings."""
    text = escape(str(exc))
    if isinstance(exc, SettingError) and exc.setting:
        name = exc.suggestion or exc.setting
        if name in PARAM_OPTIONS:
            text += f" On the command line: {PARAM_OPTIONS[name]} VALUE."
        elif exc.suggestion:
            text += f" On the command line: --set {name}=VALUE."
        else:
            text += f" On the command line, drop --set {exc.setting}=..."
    elif exc.setting:  # a setting to pass
        text += f" On the command line: --set {exc.setting}=VALUE."
    return f"[red]error:[/red] {text}"


def reports_errors(command: F) -> F:
    """modelplug's own errors print as one line and exit 1, without a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ModelPlugError as exc:
            Console(stderr=True, highlight=False, soft_wrap=True).print(error_line(exc))
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def parse_settings(pairs: list[str] | None) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE.", param_hint="--set")
        try:
            settings[key.strip()] = json.loads(value)
        except ValueError:
            settings[key.strip()] = value
    return settings


def stream_answer(backend: Backend, request: ChatRequest) -> ChatResponse:
    """Print the answer as it streams (reasoning dimmed) and return it whole."""

    def printed() -> Iterator[ChatChunk]:
        for chunk in backend.stream(request):
            if chunk.reasoning:
                console.print(chunk.reasoning, style="dim", end="", markup=False)
            if chunk.text:
                console.print(chunk.text, end="", markup=False, soft_wrap=True)
            yield chunk

    response = collect_stream(printed())
    console.print()
    return response


# -- list ----------------------------------------------------------------------------------------


@app.command("list")
@reports_errors
def list_(local: Annotated[bool, typer.Option(
        help="Probe this machine for available models (a running Ollama, cached Hugging Face "
             "models, local servers, GGUF files).")] = True) -> None:
    """Providers (and whether their dependencies are installed), known models, local models."""
    table = Table(title="Providers")
    for column in ("provider", "kind", "installed", "API key", "endpoint"):
        # Cut nothing (a name, variable or URL is copied): long cells fold onto more lines.
        table.add_column(column, no_wrap=column == "provider", overflow="fold")
    for spec in providers().values():
        table.add_row(spec.key, spec.kind,
                      _yes(True) if spec.installed else f"no: {spec.pip_hint}",
                      spec.api_key_env or "", spec.base_url or "in-process")
    console.print(table)
    console.print(_models_table("Known models (catalog)", [
        (m.info.key, Profile.from_ref(ModelRef.from_info(m.info))) for m in catalog.all_models()]))
    if not local:
        return
    found = available_models()
    if not found:
        console.print("No model is available locally (no running Ollama, cached Hugging Face "
                      "model, local server or GGUF file).")
        return
    # The backend's profile adds what runtime probes know (GGUF context, grammar-backed tools,
    # Ollama's /api/show).
    probed = [_probed_profile(ref) for ref in found]
    rows = [(str(ref), profile) for ref, (profile, _) in zip(found, probed, strict=True)]
    console.print(_models_table("Available locally", rows, [problem for _, problem in probed]))


def _probed_profile(ref: ModelRef) -> tuple[Profile, str]:
    """The backend's probed profile, or the catalog's with the reason a probe failed: one
    broken local model (a corrupt GGUF, a pickle-only cache entry) must not hide the others."""
    try:
        backend = create_backend(ref)
        backend.probe()
        return backend.profile(), ""
    except ModelPlugError as exc:
        return Profile.from_ref(ref), f"[red]{type(exc).__name__}[/red]: {escape(str(exc))}"


def _yes(value: bool | None) -> str:
    return {True: "[green]yes[/green]", False: "no", None: "?"}[value]


#: Room a problem column needs beside the capability columns before they give way.
_PROBLEM_ROOM = 24


def _models_table(title: str, rows: list[tuple[str, Profile]],
                  problems: list[str] | None = None) -> Table:
    """One row per model; ``problems`` (one per row, "" for none) adds a column of them.

    Nothing is cut: the model name is what a user copies. Where a column per capability does
    not fit the terminal whole, the capabilities share one column of words that wraps
    ("vision?": not known), and a problem wraps onto more lines."""
    columns = ["tools", "structured output", "vision", "reasoning"]
    wide = _table(title, ["model", *columns, "context"], [
        [name, *(_yes(v) for v in _capabilities(p)), _context(p)] for name, p in rows])
    room = console.width - (_PROBLEM_ROOM if problems is not None else 0)
    unbounded = console.options.update_width(10_000)  # measure() is capped at its width
    if console.measure(wide, options=unbounded).maximum <= room:
        header, cells = ["model", *columns, "context"], [
            [name, *(_yes(v) for v in _capabilities(p)), _context(p)] for name, p in rows]
    else:
        header, cells = ["model", "can", "context"], [
            [name, ", ".join(word if known else f"{word}?" for word, known
                             in zip(columns, _capabilities(p), strict=True)
                             if known is not False) or "-", _context(p)]
            for name, p in rows]
    if problems is not None:
        header, cells = [*header, "problem"], [[*c, x] for c, x in zip(cells, problems,
                                                                        strict=True)]
    return _table(title, header, cells)


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in header:
        table.add_column(column, no_wrap=column in ("model", "context"), overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _capabilities(p: Profile) -> tuple[bool | None, ...]:
    return p.tool_calling, p.structured_output, p.image_inputs, p.reasoning_output


def _context(profile: Profile) -> str:
    return f"{profile.max_input_tokens:,}" if profile.max_input_tokens else ""


# -- health --------------------------------------------------------------------------------------


@app.command()
@reports_errors
def health(models: Annotated[list[str], typer.Argument(
               help="Models to check, each 'provider:model_id' (e.g. 'vllm:Qwen/Qwen3-8B' "
                    "-s base_url=...).", show_default=False)],
           timeout: Annotated[float, typer.Option(
               help="Seconds each networked check may take (no retries).")] = 10.0,
           as_json: Annotated[bool, typer.Option(
               "--json", help="Print the health table as JSON (for scripts and logs).")] = False,
           settings: Settings = None) -> None:
    """Check each MODEL's endpoint with a one-token request and show the routing health table
    (modelplug.routing.health_table(): state, failures in a row, cooldown left, last error), as
    fallback sets and pools route by it. -s settings go to the models that take them (a
    network setting skips in-process models). Exits 1 when any check failed."""
    from modelplug.fallback import candidate_settings
    from modelplug.routing import check, health_table

    # Settings go to the models that take them, as a fallback set's shared settings do.
    shared = {"timeout": timeout, "max_retries": 0, **parse_settings(settings)}
    failed: dict[str, str] = {}
    for model, own in zip(models, candidate_settings(models, shared), strict=True):
        backend = create_backend(model, **own)
        error = check(backend)
        if error is not None:
            failed[model] = f"{type(error).__name__}: {error}"
    rows = health_table()
    if as_json:
        console.print_json(json.dumps({"endpoints": rows, "failed_checks": failed}))
    else:
        table = _table("Routing health", ["endpoint", "state", "in a row", "retry in s",
                                          "successes", "failures", "last error"], [
            [r["endpoint"], r["state"], str(r["failures_in_a_row"]), str(r["retry_in_s"]),
             str(r["successes"]), str(r["failures"]), escape(r["last_error"] or "")]
            for r in rows])
        console.print(table)
        for model, error in failed.items():
            notes.print(f"[red]{escape(model)}[/red]: {escape(error)}")
    if failed:
        raise typer.Exit(1)


# -- run and chat ----------------------------------------------------------------------------


@app.command()
@reports_errors
def run(args: Annotated[list[str], typer.Argument(
            metavar="[MODEL] PROMPT", show_default=False,
            help=f"The question, after the model to ask. MODEL: {MODEL_HELP}")],
        system: System = None, max_tokens: MaxTokens = None, temperature: Temperature = None,
        settings: Settings = None) -> None:
    """Answer one prompt, streaming the answer to stdout."""
    if len(args) > 2:
        raise typer.BadParameter(
            f"expected [MODEL] PROMPT, got {len(args)} arguments; quote the prompt: "
            "modelplug run llamacpp:smollm2 \"What is the capital of France?\"",
            param_hint="[MODEL] PROMPT")
    model, prompt = (None, args[0]) if len(args) == 1 else args
    backend = make_backend(model, parse_settings(settings))
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]
    started = time.perf_counter()
    response = stream_answer(backend, ChatRequest(messages, max_tokens=max_tokens,
                                                  temperature=temperature))
    note_finish(response, max_tokens)
    note_usage(response, backend.ref, time.perf_counter() - started)


CHAT_HELP = ("Commands: /reset (forget the conversation), /model PROVIDER:MODEL (switch model, "
             "keep the conversation), /exit.")


@app.command()
@reports_errors
def chat(model: OptionalModel = None, system: System = None, max_tokens: MaxTokens = None,
         temperature: Temperature = None, settings: Settings = None) -> None:
    """An interactive chat with streaming answers. /reset, /model MODEL, /exit."""
    backend = make_backend(model, parse_settings(settings))
    start: list[Message] = [{"role": "system", "content": system}] if system else []
    history = list(start)
    console.print(f"[bold]{backend.ref}[/bold]  {CHAT_HELP}")
    while True:
        try:
            line = console.input("[bold cyan]> [/bold cyan]").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            history = list(start)
            console.print("[dim]Conversation cleared.[/dim]")
            continue
        if line.startswith("/model"):
            name = line.removeprefix("/model").strip()
            if not name:
                console.print(f"Model: {backend.ref}")
                continue
            try:  # settings belong to the first model's provider; a new one starts clean
                backend = create_backend(name)
            except ModelPlugError as exc:
                console.print(error_line(exc))
                continue
            console.print(f"[dim]Now chatting with {backend.ref}.[/dim]")
            continue
        if line.startswith("/"):
            console.print(f"Unknown command {line.split()[0]!r}. {CHAT_HELP}")
            continue
        history.append({"role": "user", "content": line})
        try:
            answer = stream_answer(backend, ChatRequest(list(history), max_tokens=max_tokens,
                                                        temperature=temperature))
        except ModelPlugError as exc:
            history.pop()
            console.print(error_line(exc))
            continue
        history.append({"role": "assistant", "content": answer.text})
        note_finish(answer, max_tokens)
        if answer.usage is not None:  # shows the conversation growing, and /reset emptying it
            console.print(f"[dim]({answer.usage.input_tokens} tokens in, "
                          f"{answer.usage.output_tokens} out)[/dim]")


# -- serve -------------------------------------------------------------------------------------


@app.command()
@reports_errors
def serve(model: Model,
          modality: Annotated[str, typer.Option(
              metavar="chat|image|audio",
              help="What MODEL is: a chat model (/v1/chat/completions, /v1/embeddings), an "
                   "image model (/v1/images/generations; 'hf:' names a diffusers pipeline) or "
                   "an audio model (/v1/audio/speech, WAV). -s sets an image or audio model's "
                   "generation defaults too (-s num_inference_steps=4).")] = "chat",
          host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 for every one "
                                                 "(needs an API key then).")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
          api_key: Annotated[str | None, typer.Option(
              envvar="MODELPLUG_SERVE_API_KEY", show_envvar=True,
              help="Require this key as 'Authorization: Bearer <key>' on every request.")] = None,
          insecure_no_api_key: Annotated[bool, typer.Option(
              "--insecure-no-api-key",
              help="Serve a non-loopback --host without an API key: anyone who can reach the "
                   "port can use the model.")] = False,
          max_request_bytes: Annotated[int | None, typer.Option(
              min=1, help="Refuse larger request bodies (HTTP 413) before reading them "
                          "(default: 8 MiB).")] = None,
          settings: Settings = None,
          ray: Annotated[bool, typer.Option(
              "--ray", help="Serve on Ray Serve replicas, each loading the model (needs "
                            "modelplug[ray]).")] = False,
          replicas: Annotated[int | None, typer.Option(
              min=1, help="With --ray: how many replicas (default 1).")] = None,
          autoscaling: Annotated[str | None, typer.Option(
              metavar="MIN:MAX", help="With --ray: let Serve scale between MIN and MAX "
                                      "replicas.")] = None,
          replica_cpus: Annotated[float | None, typer.Option(
              min=0, help="With --ray: CPUs each replica reserves (Serve's default: 1).")] = None,
          replica_gpus: Annotated[float | None, typer.Option(
              min=0, help="With --ray: GPUs each replica reserves.")] = None,
          address: Annotated[str | None, typer.Option(
              help="With --ray: the Ray cluster (HOST:6379, ray://HOST:10001 or 'auto'); "
                   "default: start Ray on this machine.")] = None) -> None:
    """An OpenAI-compatible server for MODEL: /v1/chat/completions, /v1/embeddings, /v1/models,
    /health (an image or audio model: /v1/images/generations or /v1/audio/speech)."""
    from modelplug.server import MODALITIES, check_bind
    from modelplug.server import serve as run_server

    if modality not in MODALITIES:
        raise typer.BadParameter(f"{modality!r} is not one of {', '.join(MODALITIES)}.",
                                 param_hint="--modality")
    key = api_key or ""
    check_bind(host, key, insecure_no_api_key)  # before the banner: a refusal is the only line
    console.print(f"Serving [bold]{model}[/bold] at http://{host}:{port}/v1"
                  + (" (API key required)" if key else ""), markup=True)
    options: dict[str, Any] = {} if max_request_bytes is None else {
        "max_request_bytes": max_request_bytes}
    if modality != "chat":
        options["modality"] = modality
    if ray or replicas or autoscaling or address or replica_cpus is not None \
            or replica_gpus is not None:
        serve_on_ray_from_cli(model, ray, host, port, key, insecure_no_api_key, replicas,
                              autoscaling, replica_cpus, replica_gpus, address,
                              {**options, **parse_settings(settings)})
        return
    run_server(model, host=host, port=port, api_key=key, insecure_no_api_key=insecure_no_api_key,
               **options, **parse_settings(settings))


def serve_on_ray_from_cli(model: str, ray: bool, host: str, port: int, key: str,
                          insecure: bool, replicas: int | None, autoscaling: str | None,
                          cpus: float | None, gpus: float | None, address: str | None,
                          settings: dict[str, Any]) -> None:
    from modelplug.serving_ray import serve_on_ray

    if not ray:
        raise typer.BadParameter("--replicas, --autoscaling, --replica-cpus, --replica-gpus and "
                                 "--address deploy on Ray Serve: add --ray.", param_hint="--ray")
    scaling = None
    if autoscaling is not None:
        low, sep, high = autoscaling.partition(":")
        if not (sep and low.isdigit() and high.isdigit() and 0 <= int(low) <= int(high)
                and int(high) >= 1):
            raise typer.BadParameter(f"{autoscaling!r} is not MIN:MAX replicas (e.g. 1:4).",
                                     param_hint="--autoscaling")
        scaling = {"min_replicas": int(low), "max_replicas": int(high)}
    actor = {k: v for k, v in (("num_cpus", cpus), ("num_gpus", gpus)) if v is not None}
    console.print("On Ray Serve" + (f" at {address}" if address else " (a local Ray)")
                  + ": the replicas load the model first.")
    serve_on_ray(model, address=address, host=host, port=port, api_key=key,
                 insecure_no_api_key=insecure, blocking=True, num_replicas=replicas,
                 autoscaling_config=scaling, ray_actor_options=actor or None,
                 **settings)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())

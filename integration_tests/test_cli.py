"""The ``modelplug`` command on the real in-process SmolLM2 GGUF: ``list``, ``run`` and ``chat``
through typer's CliRunner, and the installed console script (``run``, ``serve``) as a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from modelplug import catalog, cli
from modelplug.backends.base import DEFAULT_MAX_TOKENS
from modelplug.cli import app
from modelplug.local import available_models, resolve_model

PARIS = "What is the capital of France? Answer in one sentence."
GREEDY = ["--temperature", "0", "--max-tokens", "32"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_list_shows_providers_catalog_and_local_models(runner: CliRunner) -> None:
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for title in ("Providers", "Known models (catalog)", "Available locally"):
        assert title in result.output
    assert re.search(r"llamacpp\s+│ in-process\s+│ yes", result.output)
    assert "anthropic:claude-sonnet-4-6" in result.output
    # The local table uses the backend's probed profile: grammar-backed tools and the GGUF's
    # context window, which the catalog row alone does not say.
    local = result.output.split("Available locally")[1]
    assert re.search(r"llamacpp:smollm2\s+│ yes\s+│ yes\s+│ no\s+│ no\s+│ 8,192", local)


def test_list_shows_what_resolve_model_and_the_profile_say(runner: CliRunner) -> None:
    """One answer about each model: every catalog row and every local row of ``modelplug list``
    shows the tools and structured-output values that resolve_model and the backend's profile
    give (test_first_hour.py checks that those two agree)."""
    result = runner.invoke(app, ["list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    catalog_part, local_part = result.output.split("Available locally")
    word = {True: "yes", False: "no", None: "?"}
    for member in catalog.all_models():
        ref = resolve_model(member.info.key)
        row = re.search(rf"│ {re.escape(member.info.key)} +│ (\S+) +│ (\S+) +│", catalog_part)
        assert row and row.groups() == (word[ref.tools], word[ref.structured_output]), \
            member.info.key
    for ref in available_models():
        profile = cli.create_backend(ref).profile()
        row = re.search(rf"│ {re.escape(str(ref))} +│ (\S+) +│ (\S+) +│", local_part)
        assert row and row.groups() == (word[profile.tool_calling],
                                        word[profile.structured_output]), str(ref)
        assert (profile.tool_calling, profile.structured_output) == \
            (ref.tools, ref.structured_output), str(ref)


def test_list_shows_a_broken_local_model_beside_the_working_ones(
        runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = resolve_model("llamacpp:missing-file")  # no model_path: its probe fails
    monkeypatch.setattr(cli, "available_models", lambda: [resolve_model("llamacpp:smollm2"),
                                                          broken])
    result = runner.invoke(app, ["list"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    local = result.output.split("Available locally")[1]
    assert re.search(r"llamacpp:smollm2\s+│ yes\s+│ yes\s+│ no\s+│ no\s+│ 8,192", local)
    assert re.search(r"llamacpp:missing-file .*│ ModelNotFoundError: .*needs the setting model_path", local)


def test_run_streams_the_answer(runner: CliRunner) -> None:
    result = runner.invoke(app, ["run", "llamacpp:smollm2", PARIS, *GREEDY])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output


def test_errors_are_one_line_and_exit_1(runner: CliRunner) -> None:
    result = runner.invoke(app, ["run", "nope:model", "hi"])
    assert result.exit_code == 1
    assert "Unknown provider 'nope'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["run", "llamacpp:smollm2", "hi", "--set", "n_ctx"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def _usages(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"\((\d+) tokens in", output)]


def test_chat_keeps_history_resets_and_switches_model(runner: CliRunner) -> None:
    script = "\n".join([PARIS, PARIS, "/reset", PARIS, "/model nope:x", "/model llamacpp:smollm2-135m",
                        PARIS, "/model", "/bogus", "/exit", "never sent"]) + "\n"
    result = runner.invoke(app, ["chat", "llamacpp:smollm2", *GREEDY], input=script)
    assert result.exit_code == 0, result.output
    assert result.output.count("Paris") >= 4
    first, second, after_reset, after_switch = _usages(result.output)
    assert second > first  # the second turn carries the first
    assert after_reset == first  # /reset forgot it
    assert after_switch > first  # /model keeps the conversation
    assert "Unknown provider 'nope'" in result.output
    assert "Now chatting with llamacpp:smollm2" in result.output
    assert "Model: llamacpp:smollm2" in result.output
    assert "Unknown command '/bogus'" in result.output


def test_chat_ends_at_end_of_input(runner: CliRunner) -> None:
    result = runner.invoke(app, ["chat", "llamacpp:smollm2", *GREEDY], input="")
    assert result.exit_code == 0


def _console_script() -> str:
    script = Path(sys.executable).with_name("modelplug")
    if not script.exists():
        script = shutil.which("modelplug")
    if script is None:
        pytest.fail("the modelplug console script is not installed (pip install -e libs/modelplug)")
    return str(script)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed command as a user's shell runs it: an 80-column terminal width, stdout and
    stderr piped (so not a terminal)."""
    return subprocess.run([_console_script(), *args], capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "COLUMNS": "80", **env})


def test_a_misspelt_setting_is_one_line_naming_the_one_meant_as_a_cli_option() -> None:
    done = _cli("run", "llamacpp:smollm2", "hi", "--set", "n_ctxx=10")
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "unexpected keyword argument 'n_ctxx'. Did you mean 'n_ctx'?" in done.stderr
    assert "Standard parameters: ['temperature', 'max_tokens'," in done.stderr
    assert done.stderr.rstrip().endswith("On the command line: --set n_ctx=VALUE.")
    done = _cli("run", "llamacpp:smollm2", "hi", "--set", "temprature=0")
    assert done.stderr.rstrip().endswith("On the command line: --temperature VALUE."), done.stderr


def _tokens(smollm2_path: Path, text: str) -> int:
    from llama_cpp import Llama

    vocab = Llama(model_path=str(smollm2_path), vocab_only=True, verbose=False)
    return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def test_the_readme_run_line_answers_within_the_default_budget(smollm2_path: Path) -> None:
    done = _cli("run", "llamacpp:smollm2", "What is the capital of France?")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert _tokens(smollm2_path, done.stdout) <= DEFAULT_MAX_TOKENS + 1  # + the final newline
    assert "finish_reason" not in done.stdout  # notes go to stderr: a piped answer stays clean
    assert "tokens in" not in done.stdout
    notes = [line for line in done.stderr.splitlines()
             if "finish_reason: length" not in line and "--max-tokens for a longer one" not in line]
    assert len(notes) == 1 and re.fullmatch(r"\(\d+ tokens in, \d+ out, \$0, [\d.]+ s\)",
                                            notes[0]), done.stderr


def test_run_reports_tokens_cost_and_time_on_stderr(smollm2_path: Path) -> None:
    done = _cli("run", "llamacpp:smollm2", PARIS, *GREEDY)
    assert done.returncode == 0, done.stderr
    match = re.search(r"\((\d+) tokens in, (\d+) out, \$0, ([\d.]+) s\)", done.stderr)
    assert match, done.stderr
    assert int(match[2]) == _tokens(smollm2_path, done.stdout.rstrip("\n")) > 0
    assert int(match[1]) > _tokens(smollm2_path, PARIS)  # the prompt inside the chat template


def test_an_answer_cut_by_the_budget_says_so_on_stderr() -> None:
    done = _cli("run", "llamacpp:smollm2", "Write the numbers from 1 to 1000.",
                "--max-tokens", "5", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "finish_reason" not in done.stdout
    assert "(finish_reason: length: the answer was cut at --max-tokens 5; pass a larger " \
        "--max-tokens for a longer one.)" in done.stderr


def test_run_and_chat_without_a_model_use_the_library_default() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MODELPLUG_MODEL"}
    default = str(available_models()[0])
    done = subprocess.run([_console_script(), "run", PARIS, *GREEDY], capture_output=True,
                          text=True, timeout=300, check=False, env={**env, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"Model: {default} (no MODEL given")
    if default == "llamacpp:smollm2":
        assert "Paris" in done.stdout
    result = CliRunner().invoke(app, ["chat", *GREEDY], input="/model\n/exit\n", env=env)
    assert result.exit_code == 0, result.output
    assert f"Model: {default}" in result.output


def test_verbose_logs_the_default_pick_and_where_it_came_from() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MODELPLUG_MODEL"}
    done = subprocess.run([_console_script(), "-v", "run", PARIS, *GREEDY], capture_output=True,
                          text=True, timeout=300, check=False, env={**env, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    assert f"modelplug: No model was named: using '{available_models()[0]}', from " \
        in done.stderr


def test_a_bad_default_model_variable_is_named_in_one_line() -> None:
    done = _cli("run", "hi", MODELPLUG_MODEL="llamacpp:nope")
    assert done.returncode == 1
    assert done.stderr.startswith("error: $MODELPLUG_MODEL='llamacpp:nope': 'llamacpp:nope' "
                                  "needs the setting model_path")
    assert done.stderr.rstrip().endswith("On the command line: --set model_path=VALUE.")
    assert len(done.stderr.strip().splitlines()) == 1


def test_list_keeps_every_model_name_whole_at_80_columns() -> None:
    done = _cli("list")
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    for member in catalog.all_models():
        assert re.search(rf"│ {re.escape(member.info.key)} +│", done.stdout), member.info.key
    for ref in available_models():
        assert re.search(rf"│ {re.escape(str(ref))} +│", done.stdout), str(ref)


def test_help_shows_every_default() -> None:
    for command in ("run", "chat"):
        done = _cli(command, "--help")
        assert done.returncode == 0, done.stderr
        text = " ".join(done.stdout.split()).replace("│", "").replace("  ", " ")
        assert f"else {DEFAULT_MAX_TOKENS}" in text, text
        assert "$MODELPLUG_MODEL" in text
        assert text.count("Default:") >= 5, text  # MODEL, --system, --max-tokens,
        #                                           --temperature, --set


def test_console_script_runs() -> None:
    done = subprocess.run([_console_script(), "run", "llamacpp:smollm2", PARIS, *GREEDY],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout


def test_console_script_serves_on_loopback_with_a_key_from_the_environment() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MODELPLUG_SERVE_API_KEY": "cli-key"}
    proc = subprocess.Popen([_console_script(), "serve", "llamacpp:smollm2", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/models").status_code == 401:
                    break
            except httpx.ConnectError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"modelplug serve did not start: {proc.stdout.read()}")
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url, api_key="cli-key", max_retries=0)
        completion = client.chat.completions.create(
            model="llamacpp:smollm2", messages=[{"role": "user", "content": PARIS}],
            temperature=0, max_tokens=32)
        assert "Paris" in completion.choices[0].message.content
    finally:
        proc.terminate()
        proc.wait(timeout=30)

"""The code examples run: docs pages, READMEs and example programs; the site builds with
``mkdocs build --strict``.

Every ```python block of the docs pages, the README and the libs' READMEs must compile. Blocks
that name the embedded model (``llamacpp:smollm2``) need no server, key or download, so they
also run, each in a fresh namespace, and a block that prints must print something. A comment
line before a block changes that:

- ``<!-- docs-test: compile only (reason) -->``: only compiled (cloud keys, hub downloads);
- ``<!-- docs-test: run -->``: runs although it names no embedded model (it needs nothing);
- ``<!-- docs-test: serves HOST:PORT -->``: runs, and the ``app`` it defines is served by real
  uvicorn on loopback, standing in for the ``uvicorn`` command the page tells the reader to run;
- ``<!-- docs-test: client of HOST:PORT -->``: runs against that server, the address rewritten
  to the served one. A server no block defines is started from :data:`SERVERS`.

Each program in examples/ runs whole, as ``python examples/NAME.py`` would run it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.server import LoopbackServer

ROOT = Path(__file__).resolve().parents[1]
#: The pages whose python blocks are examples: the docs site, the README, the libs' READMEs.
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md",
         *sorted(ROOT.glob("libs/*/README.md"))]
#: Example programs, each one example run as a script (``__name__ == "__main__"``).
PROGRAMS = sorted((ROOT / "examples").glob("*.py"))
BLOCK = re.compile(r"^(?:<!-- docs-test: ([^>]*?) ?-->\n)?```python\n(.*?)^```",
                   re.DOTALL | re.MULTILINE)
RUNNABLE = "llamacpp:smollm2"


def _modelplug_serve() -> Any:
    """serve.md's ``modelplug serve llamacpp:smollm2``, requiring the key its client sends."""
    from modelplug import create_backend
    from modelplug.server import create_app

    return create_app(create_backend("llamacpp:smollm2"), api_key="secret")


#: Servers the pages tell the reader to start with a shell command, by the address they use.
SERVERS: dict[str, Callable[[], Any]] = {"127.0.0.1:8000": _modelplug_serve}


def blocks() -> list[tuple[str, str, str]]:
    """(page#n, code, marker) for every python block of the pages; marker "" when none, "run"
    for an unmarked block that names the embedded model; then (program, code, "script") for
    each example program."""
    found = []
    for page in PAGES:
        for n, match in enumerate(BLOCK.finditer(page.read_text()), start=1):
            marker, code = match.group(1) or "", match.group(2)
            found.append((f"{page.relative_to(ROOT)}#{n}", code,
                          marker or ("run" if RUNNABLE in code else "")))
    return found + [(str(program.relative_to(ROOT)), program.read_text(), "script")
                    for program in PROGRAMS]


ALL = [(name, code) for name, code, _ in blocks()]
RUN = [(name, code, marker) for name, code, marker in blocks()
       if marker and not marker.startswith("compile only")]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    """Address in the docs -> the address of the loopback server standing in for it, started
    on first use."""
    started: dict[str, LoopbackServer] = {}

    class Addresses(dict):
        def serve(self, address: str, app: Any) -> None:
            started[address] = LoopbackServer(app).start()
            self[address] = f"127.0.0.1:{started[address].port}"

        def __missing__(self, address: str) -> str:
            self.serve(address, SERVERS[address]())
            return self[address]

    yield Addresses()
    for server in started.values():
        server.stop()


def test_the_docs_have_runnable_examples() -> None:
    assert len(RUN) >= 18, [name for name, _, _ in RUN]
    # the pages read first: a reader's first examples run too
    running = {name.partition("#")[0] for name, _, _ in RUN}
    assert {"README.md", "docs/getting-started.md", "examples/demo.py"} <= running, running


@pytest.mark.parametrize(("name", "code"), ALL, ids=[name for name, _ in ALL])
def test_example_compiles(name: str, code: str) -> None:
    compile(code, name, "exec")


@pytest.mark.parametrize(("name", "code", "marker"), RUN, ids=[name for name, _, _ in RUN])
def test_example_runs(name: str, code: str, marker: str, servers: dict[str, str],
                      capsys: pytest.CaptureFixture[str]) -> None:
    kind, address = marker.split()[0], marker.split()[-1]  # "client of 127.0.0.1:8001"
    if kind == "client":
        assert address in code, f"{name} does not call {address}"
        code = code.replace(address, servers[address])
    namespace: dict[str, Any] = {"__name__": "__main__" if kind == "script" else "__docs__"}
    exec(compile(code, name, "exec"), namespace)
    if kind == "serves":
        servers.serve(address, namespace["app"])
    if "print(" in code:
        assert capsys.readouterr().out.strip(), f"{name} printed nothing"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                           "-d", str(tmp_path / "site")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    providers = (tmp_path / "site" / "providers" / "index.html").read_text()
    assert "ANTHROPIC_API_KEY" in providers and "llamaserver" in providers
    assert "ChatModelPlug" in (tmp_path / "site" / "reference" / "langchain" / "index.html"
                               ).read_text()

"""The docs' code examples run, and the site builds with ``mkdocs build --strict``.

Every ```python block in docs/ must compile. Blocks that name the embedded model
(``llamacpp:smollm2``) need no server, key or download, so they also run, each in a fresh
namespace, and must print something; the others name cloud keys or servers this machine lacks
and are only compiled. A block that needs a server the reader starts first is marked with
``<!-- docs-test: compile only (reason) -->`` on the line before it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^(<!-- docs-test: compile only[^>]*-->\n)?```python\n(.*?)^```",
                   re.DOTALL | re.MULTILINE)
RUNNABLE = "llamacpp:smollm2"


def blocks() -> list[tuple[str, str, bool]]:
    """(page#n, code, runs) for every python block of the docs."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for n, match in enumerate(BLOCK.finditer(page.read_text()), start=1):
            code = match.group(2)
            found.append((f"{page.relative_to(DOCS)}#{n}", code,
                          RUNNABLE in code and not match.group(1)))
    return found


ALL = [(name, code) for name, code, _ in blocks()]
RUN = [(name, code) for name, code, runs in blocks() if runs]


def test_the_docs_have_runnable_examples() -> None:
    assert len(RUN) >= 10, [name for name, _ in RUN]


@pytest.mark.parametrize(("name", "code"), ALL, ids=[name for name, _ in ALL])
def test_example_compiles(name: str, code: str) -> None:
    compile(code, name, "exec")


@pytest.mark.parametrize(("name", "code"), RUN, ids=[name for name, _ in RUN])
def test_example_runs(name: str, code: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, name, "exec"), {"__name__": "__docs__"})
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

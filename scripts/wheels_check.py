"""Each distribution in libs/ installs from its wheel into a clean virtualenv and works there.

The editable install of the development venv sees every source file and every package any lib
pulls in, so a dependency missing from a pyproject.toml, or a file the build leaves out, would
go unnoticed there. This script builds each lib's sdist and, from that sdist, its wheel (what
``python -m build`` does and what an index receives), checks that both contain every file of
the package source, the LICENSE and ``py.typed``, then installs the wheel into a virtualenv
holding only its declared dependencies and one extra (``llamacpp``; the adapters on top of the
core wheel) and makes a first call there on the embedded model (``llamacpp:smollm2``).

The virtualenvs are kept in ``$MODELPLUG_CACHE/wheels-check`` under a key made of the declared
requirements (and the Python and llama-cpp-python wheel): a venv is created afresh whenever
any declared requirement changes, so no package a requirement used to pull in can stay behind
and hide a missing one. While the requirements stay the same, only our own wheels are
reinstalled into it.

Run by ``make wheels-check`` (part of ``make test``) with the development venv's Python, which
has ``build``: ``python scripts/wheels_check.py [LIB ...]`` (default: every lib).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LIBS = ROOT / "libs"
#: Builds (once per machine) and installs the pinned llama-cpp-python wheel.
LLAMACPP_WHEEL = ROOT / "scripts" / "llamacpp-wheel.sh"
CORE = "modelplug"
#: The one extra every venv gets: the in-process llama.cpp backend the first calls run on.
EXTRA = "llamacpp"

#: What each distribution's first call is, run by the venv's Python in isolated mode (no
#: PYTHONPATH, no current directory on the path): every public name imports, and the embedded
#: model answers through the distribution's own class.
_CHAT = "What is the capital of France? Answer in one sentence."
FIRST_CALL = {
    "modelplug": f"""
from modelplug import ChatRequest, create_backend
reply = create_backend("llamacpp:smollm2").chat(ChatRequest(
    messages=[{{"role": "user", "content": {_CHAT!r}}}], temperature=0, max_tokens=24))
answer = reply.text
""",
    "langchain-modelplug": f"""
from langchain_modelplug import ChatModelPlug
answer = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=24).invoke(
    {_CHAT!r}).content
""",
    "llama-index-llms-modelplug": f"""
from llama_index.core.llms import ChatMessage
from llama_index.llms.modelplug import ModelPlug
answer = ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=24).chat(
    [ChatMessage(role="user", content={_CHAT!r})]).message.content
""",
    "llama-index-embeddings-modelplug": """
from llama_index.embeddings.modelplug import ModelPlugEmbedding
vector = ModelPlugEmbedding(model="llamacpp:smollm2").get_text_embedding("Paris")
assert len(vector) > 100 and all(isinstance(x, float) for x in vector), vector[:5]
answer = f"Paris: {len(vector)} floats"
""",
}
#: Shared by every first call: the package is the venv's, not a source tree's, and each public
#: name imports (a lazily exported one whose module needs an undeclared package would not).
_PRELUDE = """
import importlib, sys
package = importlib.import_module({module!r})
assert package.__file__.startswith(sys.prefix), (package.__file__, sys.prefix)
for name in getattr(package, "__all__", []):
    getattr(package, name)
"""
_EPILOGUE = """
assert "Paris" in answer, answer
print(answer)
"""


@dataclass
class Lib:
    """One distribution in libs/."""

    path: Path
    name: str
    #: Import names of its packages (``modelplug``, ``llama_index.llms.modelplug``).
    packages: list[str]
    #: The names its declared dependencies give (``modelplug``, ``llama-index-core``).
    requires: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Lib:
        project = tomllib.loads((path / "pyproject.toml").read_text())
        include = project["tool"]["setuptools"]["packages"]["find"]["include"]
        requires = [re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]
                    for r in project["project"].get("dependencies", [])]
        return cls(path, project["project"]["name"], [p.rstrip("*").rstrip(".") for p in include],
                   requires)

    def source_files(self) -> list[str]:
        """Every file of its packages, relative to the lib (``modelplug/catalog/text.py``)."""
        found = []
        for package in self.packages:
            top = self.path / package.replace(".", "/")
            found += [f.relative_to(self.path).as_posix() for f in sorted(top.rglob("*"))
                      if f.is_file() and "__pycache__" not in f.parts]
        return found


def missing_files(lib: Lib, wheel: Path, sdist: Path) -> list[str]:
    """What the built wheel and sdist lack: a package file, the LICENSE, a py.typed marker."""
    with zipfile.ZipFile(wheel) as z:
        in_wheel = set(z.namelist())
    with tarfile.open(sdist) as t:
        # sdist members are "<name>-<version>/<path>"
        in_sdist = {m.name.partition("/")[2] for m in t.getmembers() if m.isfile()}
    problems, source = [], lib.source_files()
    for package in lib.packages:
        typed = f"{package.replace('.', '/')}/py.typed"
        if typed not in source:
            problems.append(f"{lib.name}: no {typed} in the source (PEP 561 marker)")
    for file in source:
        problems += [f"{lib.name}: {kind} lacks {file}"
                     for kind, names in (("wheel", in_wheel), ("sdist", in_sdist))
                     if file not in names]
    if "LICENSE" not in in_sdist:
        problems.append(f"{lib.name}: sdist lacks LICENSE")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in in_wheel):
        problems.append(f"{lib.name}: wheel lacks LICENSE (dist-info/licenses)")
    return problems


def requirements(wheel: Path) -> list[str]:
    """The wheel's declared requirements: the metadata lines that decide what pip installs."""
    with zipfile.ZipFile(wheel) as z:
        [metadata] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        headers = HeaderParser().parsestr(z.read(metadata).decode())
    return sorted(f"{key}: {value}" for key in ("Name", "Requires-Python", "Requires-Dist",
                                                "Provides-Extra")
                  for value in headers.get_all(key, []))


def venv_key(wheels: list[Path]) -> str:
    """Changes whenever anything that decides the venv's third-party packages changes: the
    Python, the llama-cpp-python build, what our wheels declare (not their code)."""
    digest = hashlib.sha256(sys.version.encode() + LLAMACPP_WHEEL.read_bytes())
    for wheel in wheels:
        digest.update("\n".join(requirements(wheel)).encode() + b"\n\n")
    return digest.hexdigest()[:16]


#: The environment of every command run in a venv: no PYTHONPATH (a source tree on it would
#: satisfy a requirement pip should install, or shadow the installed package).
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def run(command: list[str], env: dict[str, str] = CLEAN_ENV) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, command))}\n"
                         f"{done.stdout[-4000:]}{done.stderr[-4000:]}")


def build(lib: Lib, out: Path) -> tuple[Path, Path]:
    """The lib's sdist, and its wheel built from that sdist (``python -m build``'s default)."""
    target = out / lib.path.name
    run([sys.executable, "-m", "build", "--outdir", str(target), str(lib.path)], env=os.environ)
    [wheel] = target.glob("*.whl")
    [sdist] = target.glob("*.tar.gz")
    return wheel, sdist


def ours(lib: Lib, libs: dict[str, Lib]) -> list[str]:
    """``lib`` and the libs it depends on, directly or through another (the core, for the
    adapters): installed from their wheels, as no index has them."""
    names, todo = [], [lib.name]
    while todo:
        name = todo.pop(0)
        if name not in names:
            names.append(name)
            todo += [r for r in libs[name].requires if r in libs]
    return names


def install(lib: Lib, wheels: dict[str, Path], cache: Path, libs: dict[str, Lib]) -> Path:
    """A venv with ``lib`` installed from its wheel and only what it declares (our libs among
    that from their wheels), plus EXTRA (the adapters through their own extra, which names the
    core's). Reused while the declared requirements are the same; then only our wheels are
    reinstalled."""
    mine = [wheels[name] for name in ours(lib, libs)]
    targets = [f"{mine[0]}[{EXTRA}]", *map(str, mine[1:])]
    venv = cache / "wheels-check" / f"{lib.name}-{venv_key(mine)}"
    python = venv / "bin" / "python"
    pip = [str(python), "-I", "-m", "pip", "--disable-pip-version-check"]
    done = venv / ".complete"
    for stale in venv.parent.glob(f"{lib.name}-*"):
        if stale != venv or not done.exists():
            shutil.rmtree(stale)
    if done.exists():
        done.unlink()  # set again once it checks out; else the next run starts afresh
        run([*pip, "install", "-q", "--no-deps", "--force-reinstall", *map(str, mine)])
    else:
        run([sys.executable, "-m", "venv", str(venv)])
        # llama-cpp-python from the wheel built once per machine (its sdist compiles for minutes)
        run(["bash", str(LLAMACPP_WHEEL)],
            env={**CLEAN_ENV, "MODELPLUG_CACHE": str(cache), "PIP": " ".join([*pip, "-q"])})
        run([*pip, "install", "-q", *targets])
    run([*pip, "check"])
    done.touch()
    return python


def first_call(lib: Lib, python: Path) -> str:
    """Runs the lib's first call in the venv, away from the work tree; returns what it printed."""
    code = (_PRELUDE.format(module=lib.packages[0]) + FIRST_CALL[lib.name] + _EPILOGUE)
    with tempfile.TemporaryDirectory() as empty:
        done = subprocess.run([str(python), "-I", "-c", code], cwd=empty, env=CLEAN_ENV,
                              capture_output=True, text=True, timeout=300, check=False)
    if done.returncode:
        raise SystemExit(f"{lib.name}: the first call failed in {python.parents[1]}\n"
                         f"{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("libs", nargs="*", help="lib folder names (default: all)")
    args = parser.parse_args(argv)
    cache = Path(os.environ.get("MODELPLUG_CACHE", Path.home() / ".cache" / "modelplug"))
    found = (Lib.load(p.parent) for p in sorted(LIBS.glob("*/pyproject.toml")))
    libs = {lib.name: lib for lib in found}
    chosen = [lib for lib in libs.values() if not args.libs or lib.path.name in args.libs]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        wheels, problems = {}, []
        needed = {name for lib in chosen for name in ours(lib, libs)}
        for lib in (libs[name] for name in libs if name in needed):
            wheel, sdist = build(lib, Path(out))
            wheels[lib.name] = wheel
            problems += missing_files(lib, wheel, sdist)
        if problems:
            raise SystemExit("\n".join(problems))
        for lib in chosen:
            answer = first_call(lib, install(lib, wheels, cache, libs))
            print(f"{lib.name}: installed from {wheels[lib.name].name}; {answer}")
    print(f"wheels-check: {len(chosen)} distributions in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

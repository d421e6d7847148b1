"""scripts/wheels_check.py (make wheels-check): what it finds missing in a built wheel and sdist,
and when it makes a virtualenv afresh. The builds and installs themselves run in make test."""

from __future__ import annotations

import importlib.util
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("wheels_check", ROOT / "scripts" / "wheels_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _dist(tmp_path: Path, lib, files: list[str], license: bool = True) -> tuple[Path, Path]:
    """A wheel and an sdist holding ``files`` of ``lib`` (read from its source tree)."""
    wheel, sdist = tmp_path / "x-0.1.0-py3-none-any.whl", tmp_path / "x-0.1.0.tar.gz"
    with zipfile.ZipFile(wheel, "w") as z:
        for file in files:
            z.write(lib.path / file, file)
        if license:
            z.write(lib.path / "LICENSE", "x-0.1.0.dist-info/licenses/LICENSE")
    with tarfile.open(sdist, "w:gz") as t:
        for file in files + (["LICENSE"] if license else []):
            t.add(lib.path / file, f"x-0.1.0/{file}")
    return wheel, sdist


def test_every_lib_is_found_with_its_packages(check) -> None:
    libs = {lib.name: lib for lib in map(check.Lib.load, sorted((ROOT / "libs").iterdir()))}
    assert set(libs) == set(check.FIRST_CALL)
    assert libs["llama-index-llms-modelplug"].packages == ["llama_index.llms.modelplug"]
    assert "modelplug/catalog/text.py" in libs["modelplug"].source_files()


def test_a_lib_is_installed_with_the_libs_it_depends_on(check) -> None:
    """No index has our libs: each venv gets, from their wheels, the lib and every lib its
    declared dependencies name (the embeddings package takes BackendFields from the llms one)."""
    libs = {lib.name: lib for lib in map(check.Lib.load, sorted((ROOT / "libs").iterdir()))}
    assert check.ours(libs["modelplug"], libs) == ["modelplug"]
    assert check.ours(libs["langchain-modelplug"], libs) == ["langchain-modelplug", "modelplug"]
    assert check.ours(libs["llama-index-embeddings-modelplug"], libs) == [
        "llama-index-embeddings-modelplug", "modelplug", "llama-index-llms-modelplug"]
    assert not any("__pycache__" in f for f in libs["modelplug"].source_files())


def test_a_complete_build_lacks_nothing(check, tmp_path: Path) -> None:
    lib = check.Lib.load(ROOT / "libs" / "modelplug")
    assert check.missing_files(lib, *_dist(tmp_path, lib, lib.source_files())) == []


@pytest.mark.parametrize("left_out", ["modelplug/catalog/text.py", "modelplug/py.typed"])
def test_a_file_left_out_is_named(check, tmp_path: Path, left_out: str) -> None:
    lib = check.Lib.load(ROOT / "libs" / "modelplug")
    files = [f for f in lib.source_files() if f != left_out]
    assert check.missing_files(lib, *_dist(tmp_path, lib, files)) == [
        f"modelplug: wheel lacks {left_out}", f"modelplug: sdist lacks {left_out}"]


def test_a_missing_license_is_named(check, tmp_path: Path) -> None:
    lib = check.Lib.load(ROOT / "libs" / "langchain-modelplug")
    assert check.missing_files(lib, *_dist(tmp_path, lib, lib.source_files(), license=False)) == [
        "langchain-modelplug: sdist lacks LICENSE",
        "langchain-modelplug: wheel lacks LICENSE (dist-info/licenses)"]


def test_a_package_without_py_typed_is_named(check, tmp_path: Path) -> None:
    lib = check.Lib(tmp_path / "lib", "untyped", ["untyped"])
    (lib.path / "untyped").mkdir(parents=True)
    (lib.path / "untyped" / "__init__.py").write_text("")
    (lib.path / "LICENSE").write_text("Apache-2.0")
    assert check.missing_files(lib, *_dist(tmp_path, lib, lib.source_files())) == [
        "untyped: no untyped/py.typed in the source (PEP 561 marker)"]


def _wheel(path: Path, metadata: str, code: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x-0.1.0.dist-info/METADATA", metadata)
        z.writestr("x/__init__.py", code)
    return path


def test_the_venv_is_made_afresh_when_a_requirement_changes(check, tmp_path: Path) -> None:
    """Code changes keep the venv (our wheels are reinstalled); a declared requirement, added,
    removed or changed, makes a new one, so nothing it pulled in stays behind."""
    metadata = ("Metadata-Version: 2.4\nName: x\nVersion: 0.1.0\nRequires-Dist: a>=1\n"
                "Provides-Extra: y\nRequires-Dist: b; extra == 'y'\n\nThe README.\n")
    key = check.venv_key([_wheel(tmp_path / "1.whl", metadata)])
    assert check.venv_key([_wheel(tmp_path / "2.whl", metadata.replace("README", "docs"),
                                  code="x = 1")]) == key
    for changed in (metadata.replace("a>=1", "a>=2"),
                    metadata.replace("Requires-Dist: a>=1\n", ""),
                    metadata.replace("\n\n", "\nRequires-Dist: c\n\n")):
        assert check.venv_key([_wheel(tmp_path / "3.whl", changed)]) != key

"""docs/gen_pages.py: the generated provider, model and capability pages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from modelplug import catalog
from modelplug.registry import providers

GEN = Path(__file__).resolve().parents[1] / "docs" / "gen_pages.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_pages", GEN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_provider_page_has_every_registry_row(gen) -> None:
    page = gen.providers_page()
    for spec in providers().values():
        assert f"| `{spec.key}` | {spec.kind} | `pip install 'modelplug[{spec.extra}]'` " in page
        if spec.api_key_env:
            assert f"`{spec.api_key_env}`" in page


def test_model_page_has_every_catalog_model(gen) -> None:
    page = gen.models_page()
    for member in catalog.all_models():
        assert f"| `{member.name}` | `{member.info.key}` |" in page


def test_without_results_the_matrix_says_so(gen, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    page = gen.capabilities_page(tmp_path / ".reports" / "junit.xml")
    assert "No test results yet" in page and "make test" in page
    assert "|" not in page.split("No test results yet")[1]  # no invented table


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
{cases}
</testsuite></testsuites>"""


def case(cls: str, name: str, body: str = "", module: str = "test_standard_llamacpp") -> str:
    return (f'<testcase classname="integration_tests.{module}.{cls}" name="{name}" time="1">'
            f"{body}</testcase>")


def test_matrix_cells_come_from_outcomes(gen, tmp_path: Path, monkeypatch) -> None:
    llama = "TestChatModelPlugLlamaCppIntegration"
    xfail = '<skipped type="pytest.xfail" message="a 135M model limit" />'
    cases = [
        case(llama, "test_invoke"), case(llama, "test_stream"), case(llama, "test_astream"),
        case(llama, "test_tool_calling"), case(llama, "test_tool_choice", xfail),
        case(llama, "test_structured_output[json_schema]", '<failure message="boom" />'),
        case(llama, "test_structured_output[pydantic]", xfail),
        case(llama, "test_image_inputs", '<skipped type="pytest.skip" message="not supported" />'),
        case("TestSomethingNew", "test_usage_metadata", module="test_standard_new"),
        # Not a standard integration suite: left out.
        case("TestChatModelPlugLlamaCpp", "test_invoke", module="test_standard_chat_model_x"
             ).replace("integration_tests.", "unit_tests."),
        case("TestOther", "test_invoke", module="test_serve"),
    ]
    junit = tmp_path / ".reports" / "junit.xml"
    junit.parent.mkdir()
    junit.write_text(JUNIT.format(cases="\n".join(cases)))
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    page = gen.capabilities_page(junit)
    cells = [[c.strip() for c in line.strip().strip("|").split("|")]
             for line in page.splitlines() if line.startswith("| ") and "---" not in line]
    rows = {row[0]: row[1:] for row in cells}
    features = list(gen.FEATURES)
    llama_row = dict(zip(features, rows.pop("`llamacpp` in-process GGUF (ChatModelPlug)"),
                         strict=True))
    assert llama_row["chat"] == "✅ 1/1"
    assert llama_row["streaming"] == "✅ 2/2"
    assert llama_row["async"] == "✅ 1/1"
    assert llama_row["tool calling"] == "⚠️ 1/2 (1 xfailed)"
    assert llama_row["structured output"] == "❌ 0/2 (1 xfailed, 1 failed)"
    assert llama_row["images"] == "not claimed"
    assert llama_row["embeddings"] == ""
    new_row = dict(zip(features, rows.pop("TestSomethingNew"), strict=True))
    assert new_row["usage"].startswith("✅ 1/1")
    assert set(rows) == {"configuration"}  # the header; nothing else became a row

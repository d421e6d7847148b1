"""Generated docs pages, written by the mkdocs-gen-files plugin on every ``mkdocs build``.

- ``providers.md`` and ``models.md`` come from the registry and the catalog (never copied by hand);
- ``capabilities.md`` comes from the test results that ``make test`` writes to
  ``.reports/junit.xml``: each LangChain standard-suite configuration is a row, each feature a
  column, each cell the outcome of that feature's standard tests. Without results the page says
  so instead of guessing.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from modelplug import catalog
from modelplug.catalog.media import AUDIO_MODEL_ENUMS, IMAGE_MODEL_ENUMS
from modelplug.registry import ProviderSpec, media_providers, providers

ROOT = Path(__file__).resolve().parents[1]
JUNIT = ROOT / ".reports" / "junit.xml"

# -- provider matrix and model catalog ------------------------------------------------------


def providers_page() -> str:
    lines = [
        "# Provider matrix",
        "",
        "Generated from the provider rows in `modelplug/registry.py`: every provider key, the "
        "extra that installs its SDK, the variable its API key comes from, its default endpoint "
        "and the provider-specific keyword arguments it accepts (anything else is a TypeError "
        "that lists these).",
        "",
        "| provider | kind | install | API key | default endpoint | provider kwargs | backend |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [_provider_row(spec) for spec in providers().values()]
    for modality in ("image", "audio"):
        lines += ["", f"## {modality.capitalize()} providers", "",
                  f"`ImageModelPlug` / `AudioModelPlug` and `create_{modality}_backend` resolve "
                  f"`provider:model_id` against these rows (their own namespace: `hf:` is a "
                  f"{'diffusers pipeline' if modality == 'image' else 'text-to-audio model'} "
                  "here).", "",
                  "| provider | kind | install | API key | default endpoint | provider kwargs "
                  "| backend |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [_provider_row(spec) for spec in media_providers(modality)]
    lines += ["", "Descriptions:", ""]
    lines += [f"- `{spec.key}`: {spec.description}" for spec in providers().values()
              if spec.description]
    return "\n".join(lines) + "\n"


def _provider_row(spec: ProviderSpec) -> str:
    kwargs = ", ".join(f"`{k}`" for k in sorted(spec.kwargs))
    backend = spec.backend.rpartition(".")[2].replace(":", ".")
    return (f"| `{spec.key}` | {spec.kind} | `pip install 'modelplug[{spec.extra}]'` "
            f"| {_code(spec.api_key_env) or 'none'} | {_code(spec.base_url) or 'in-process'} "
            f"| {kwargs} | `{backend}` |")


def models_page() -> str:
    lines = [
        "# Model catalog",
        "",
        "Generated from `modelplug/catalog/`. Each model is an enum member (for IDE completion) "
        "and a `provider:model_id` string. Free-form ids (local servers, hub ids, GGUF files) need "
        "no row: their limits come from runtime probes, and `;tools,vision,thinking` flags "
        "declare what an ad-hoc model can do.",
        "",
    ]
    for enum_cls in catalog.TEXT_MODEL_ENUMS:
        lines += [f"## `{enum_cls.__name__}`", "",
                  "| member | model string | tools | thinking | vision | context | max output "
                  "| notes |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for member in enum_cls:
            info = member.info
            notes = ["embedding model" if info.kind == "embedding" else "",
                     f"thinking: {info.thinking_style}" if info.thinking_style else "",
                     f"tool calls: {info.tool_call_format}" if info.tool_call_format else "",
                     f"ships in `{info.package}`" if info.package else "",
                     f"aliases: {', '.join(info.aliases)}" if info.aliases else ""]
            lines.append(
                f"| `{member.name}` | `{info.key}` | {_mark(info.tools)} | {_mark(info.thinking)} "
                f"| {_mark(info.vision)} | {_num(info.context_window)} | {_num(info.max_output)} "
                f"| {'; '.join(n for n in notes if n)} |")
        lines.append("")
    for enum_cls in (*IMAGE_MODEL_ENUMS, *AUDIO_MODEL_ENUMS):
        lines += [f"## `{enum_cls.__name__}`", "",
                  "| member | model string | pipeline class | aliases |", "| --- | --- | --- | --- |"]
        for member in enum_cls:
            info = member.info
            default = "transformers text-to-audio" if info.modality == "audio" else (
                "from `model_index.json`")
            pipeline = _code(info.pipeline_class) or (default if info.provider == "hf" else "")
            lines.append(f"| `{member.name}` | `{info.key}` | {pipeline} "
                         f"| {', '.join(f'`{a}`' for a in info.aliases)} |")
        lines.append("")
    return "\n".join(lines)


def _code(value: str | None) -> str:
    return f"`{value}`" if value else ""


def _mark(value: bool) -> str:
    return "yes" if value else "no"


def _num(value: int | None) -> str:
    return f"{value:,}" if value else ""


# -- capability matrix from test results ----------------------------------------------------

#: Feature columns: which LangChain standard-suite tests (langchain-tests' ChatModelIntegrationTests
#: and EmbeddingsIntegrationTests) decide each cell. A test counts for every feature it matches.
FEATURES: dict[str, str] = {
    "chat": r"test_(invoke|batch|conversation|double_messages_conversation|message_with_name|"
            r"stop_sequence)\b",
    "streaming": r"test_a?stream\b|test_a?stream_with_model_override\b",
    "async": r"test_a(invoke|batch|stream)\b",
    "tool calling": r"test_(tool_|bind_runnables_as_tools|unicode_tool_call|agent_loop)",
    "structured output": r"test_(structured_output|structured_few_shot|json_mode)",
    "usage": r"test_usage_metadata",
    "images": r"test_image_",
    "embeddings": r"test_a?embed_",
}

#: Standard-suite classes (rows), by class name. A class not listed here is shown by its name.
CONFIGURATIONS: dict[str, str] = {
    "TestChatModelPlugLlamaCppIntegration": "`llamacpp` in-process GGUF (ChatModelPlug)",
    "TestChatModelPlugHFIntegration": "`hf` in-process transformers (ChatModelPlug)",
    "TestLlamaServerStandard": "`llamaserver` OpenAI-compatible server (ChatModelPlug)",
    "TestAnthropicLlamaServerStandard": "`anthropic` SDK against llama-server's Messages API",
    "TestFallbackChatModelIntegration": "FallbackChatModel (down server, then `llamacpp`)",
    "TestModelPlugEmbeddingsLlamaCpp": "`llamacpp` embeddings (ModelPlugEmbeddings)",
    "TestModelPlugEmbeddingsLlamaServer": "`llamaserver` embeddings (ModelPlugEmbeddings)",
}

#: Only the integration standard suites: they run real models, so their outcomes say what works.
SUITE_MODULE = re.compile(r"^integration_tests\.test_standard_\w+$")


def read_outcomes(junit: Path) -> dict[str, dict[str, list[str]]]:
    """{class name: {test name: outcome}}, outcomes being passed, failed, xfailed or skipped."""
    rows: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for case in ET.parse(junit).iter("testcase"):
        module, _, cls = case.get("classname", "").rpartition(".")
        if not cls.startswith("Test") or not SUITE_MODULE.search(module):
            continue
        name = case.get("name", "").split("[")[0]
        rows[cls][name].append(_outcome(case))
    return rows


def _outcome(case: ET.Element) -> str:
    if case.find("failure") is not None or case.find("error") is not None:
        return "failed"
    skipped = case.find("skipped")
    if skipped is not None:
        return "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
    return "passed"


def cell(outcomes: list[str]) -> str:
    """One matrix cell: passed/run, with expected failures and failures named."""
    ran = [o for o in outcomes if o != "skipped"]
    if not ran:
        return "not claimed" if outcomes else ""
    passed = ran.count("passed")
    notes = [f"{ran.count(o)} {o}" for o in ("xfailed", "failed") if ran.count(o)]
    mark = "✅" if passed == len(ran) else "❌" if passed == 0 else "⚠️"
    return f"{mark} {passed}/{len(ran)}" + (f" ({', '.join(notes)})" if notes else "")


def capabilities_page(junit: Path = JUNIT) -> str:
    head = [
        "# Capability matrix",
        "",
        "Provider configuration by feature, generated from the results of the LangChain standard "
        "test suites (`langchain-tests`) that `make test` runs against real models. A cell is "
        "*passed/run* for that feature's standard tests; *xfailed* are expected failures, each "
        "with its stated reason in the test file (mostly limits of the 135M test model, not of "
        "the adapter); *not claimed* means the configuration does not declare the feature, so "
        "the suite skipped it; an empty cell means no test of that feature applies. "
        "Providers tested only against wire-level fakes (OpenAI, Gemini, Ollama's native API, "
        "Anthropic's extras) check request shapes rather than what a model can do, so they are "
        "not rows here.",
        "",
    ]
    if not junit.is_file():
        return "\n".join([*head, '!!! note "No test results yet"',
                          f"    There is no `{junit.relative_to(ROOT)}`. Run `make test` (it "
                          "writes the JUnit report), then `make docs`.", ""])
    rows = read_outcomes(junit)
    if not rows:
        return "\n".join([*head, '!!! note "No standard-suite results"',
                          f"    `{junit.relative_to(ROOT)}` holds no results of the standard "
                          "suites (`integration_tests/test_standard_*.py`). Run `make test`, "
                          "then `make docs`.", ""])
    when = datetime.fromtimestamp(junit.stat().st_mtime, tz=timezone.utc)
    lines = [
        *head,
        f"Results from `{junit.relative_to(ROOT)}`, written {when:%Y-%m-%d %H:%M} UTC.", "",
        "| configuration | " + " | ".join(FEATURES) + " |",
        "| --- |" + " --- |" * len(FEATURES),
    ]
    for cls in sorted(rows, key=lambda c: list(CONFIGURATIONS).index(c)
                      if c in CONFIGURATIONS else len(CONFIGURATIONS)):
        tests = rows[cls]
        cells = [cell([o for name, outs in tests.items() if re.match(pattern, name)
                       for o in outs]) for pattern in FEATURES.values()]
        lines.append(f"| {CONFIGURATIONS.get(cls, cls)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    return {"providers.md": providers_page(), "models.md": models_page(),
            "capabilities.md": capabilities_page()}


def check_capabilities(junit: Path = JUNIT) -> list[str]:
    """What is wrong with the capability matrix the report gives: a configuration of
    CONFIGURATIONS without results, or one whose chat tests did not pass."""
    if not junit.is_file():
        return [f"no {junit}: run the tests with --junitxml first"]
    rows = read_outcomes(junit)
    problems = [f"{cls}: no results in {junit.name}" for cls in CONFIGURATIONS if cls not in rows]
    for cls, tests in rows.items():
        chat = [o for name, outs in tests.items() if re.match(FEATURES["chat"], name)
                for o in outs]
        if "embed" not in cls.lower() and "passed" not in chat:
            problems.append(f"{cls}: no chat test passed")
    return problems


if __name__ == "__main__" and sys.argv[1:] == ["--check"]:  # make test, after the tests
    problems = check_capabilities()  # silent when complete: pytest's summary stays CI's last line
    sys.exit(f"{capabilities_page()}\nCapability matrix incomplete:\n" + "\n".join(problems)
             if problems else 0)
elif __name__ in ("<run_path>", "__main__"):  # mkdocs-gen-files runs this file with runpy
    import mkdocs_gen_files

    for path, text in pages().items():
        with mkdocs_gen_files.open(path, "w") as fh:
            fh.write(text)

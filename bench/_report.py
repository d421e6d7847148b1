"""Shared pieces of the bench scripts: the machine, timing helpers, the table, RESULTS.md.

Every script measures its alternatives side by side in one run (interleaved rounds, medians),
prints one table of ratios against targets, and appends it to ``bench/RESULTS.md`` with the
machine, the date, the command and the git commit.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the flags every script takes."""
    first = (doc or "").strip().splitlines()[0] if doc else None
    p = argparse.ArgumentParser(description=first)
    p.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    p.add_argument("--no-record", action="store_true",
                   help="print the table only; do not append it to bench/RESULTS.md")
    return p


# -- the machine --------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu() -> str | None:
    """The CUDA device torch sees, or None (torch is imported only if it is installed)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB) x{torch.cuda.device_count()}"


def machine(with_gpu: bool = True) -> str:
    """One line: CPU, cores, memory, GPU (or none), Python. ``with_gpu=False`` skips importing
    torch (the scripts that measure imports or the networked path do not load it)."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        mem_s = f"{mem:.0f} GiB RAM"
    except (ValueError, OSError):
        mem_s = "? RAM"
    try:
        load = f"load {os.getloadavg()[0]:.2f}"
    except OSError:
        load = "load ?"
    g = gpu() if with_gpu else "not probed"
    return (f"{cpu_model()}, {os.cpu_count()} cores, {mem_s}, GPU: {g or 'none'}, "
            f"Python {platform.python_version()}, {load} at start")


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "libs"], cwd=ROOT,
                               text=True, capture_output=True).stdout.strip()
        return sha + (" (+ uncommitted changes in libs/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command() -> str:
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


# -- measuring ----------------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call every ``runs[name]()`` once per round, rotating the order each round so no
    alternative always goes first; returns each one's samples."""
    names = list(runs)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            out[name].append(runs[name]())
    return out


# -- the table ----------------------------------------------------------------------------------

@dataclass
class Table:
    """A titled table of measurements, then rows of ratios against targets."""

    title: str
    question: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    checks: list[tuple[str, str, str, bool | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"

    def row(self, *cells: Any) -> None:
        self.rows.append(list(cells))

    def check(self, what: str, measured: str, target: str, ok: bool | None) -> None:
        """One target: ``ok`` True (pass), False (miss) or None (reference only)."""
        self.checks.append((what, measured, target, ok))

    def note(self, text: str) -> None:
        self.notes.append(text)

    @staticmethod
    def _md(header: list[str], rows: list[list[Any]]) -> list[str]:
        cells = [[_fmt(c) for c in r] for r in rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
                  for i, h in enumerate(header)]
        def line(r: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

        return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                *(line(r) for r in cells)]

    def markdown(self) -> str:
        out = [f"## {self.title}", "", f"_{self.question}_", ""]
        out.append(f"- date: {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
        out.append(f"- machine: {machine()}")
        out.append(f"- ran on: {self.device}")
        out.append(f"- command: `{command()}`")
        out.append(f"- commit: {git_commit()}")
        out.append("")
        out += self._md(self.columns, self.rows)
        if self.checks:
            out.append("")
            out += self._md(["target", "measured", "wanted", "result"],
                            [[w, m, t, {True: "pass", False: "MISS", None: "reference"}[ok]]
                             for w, m, t, ok in self.checks])
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def finish(self, args: argparse.Namespace) -> None:
        """Print the table and, unless ``--no-record``, append it to RESULTS.md."""
        text = self.markdown()
        print()
        print(text)
        if not getattr(args, "no_record", False):
            if not RESULTS.exists():
                RESULTS.write_text(_HEADER)
            with RESULTS.open("a") as fh:
                fh.write("\n" + text)
            print(f"(appended to {RESULTS.relative_to(ROOT)})")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


_HEADER = """# Benchmark results

Appended by the scripts in `bench/` (`make bench` runs them all). Each section is one run of one
script: the alternatives were measured side by side in that run, interleaved, and the ratios are
medians. Absolute numbers depend on the machine and on what else it was doing; the ratios are
what the targets are about.
"""

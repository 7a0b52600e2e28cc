"""Which Python 3.11 to build the virtualenv from: the same pure-Python loop timed on each 3.11
interpreter of this machine, in alternating runs (the Makefile prefers the distribution's build).

    make bench B=bench/bench_interpreter.py
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
from pathlib import Path

from harness import base_interpreter, machine_line, write_section

RUNS = 15
LOOP = """
import time
started, total = time.perf_counter(), 0
for number in range(300_000):
    total += number % 7
print(time.perf_counter() - started)
"""
WHO = "import sys, sysconfig; print(sys.version.split()[0], sysconfig.get_config_var('prefix'))"


def interpreters() -> list[str]:
    """The distinct Python 3.11 executables: the venv's base, python3.11 and python3 on PATH, Debian's."""
    candidates = [
        base_interpreter(),
        shutil.which("python3.11"),
        shutil.which("python3"),
        "/usr/bin/python3.11",
    ]
    found: dict[str, str] = {}
    for candidate in candidates:
        if not candidate or not Path(candidate).exists():
            continue
        described = subprocess.run([candidate, "-c", WHO], capture_output=True, text=True, check=False)
        version, _, prefix = described.stdout.strip().partition(" ")
        if version.startswith("3.11.") and prefix not in found:
            found[prefix] = candidate
    return list(found.values())


def main() -> None:
    pythons = interpreters()
    timings: dict[str, list[float]] = {python: [] for python in pythons}
    for _ in range(RUNS):
        for python in pythons:
            out = subprocess.run([python, "-c", LOOP], capture_output=True, text=True, check=True).stdout
            timings[python].append(float(out) * 1000)
    fastest = min(statistics.median(values) for values in timings.values())
    lines = [
        "## Interpreter (`bench/bench_interpreter.py`)",
        "",
        f"{machine_line()}; a pure-Python loop of 300,000 iterations, {RUNS} alternating runs per "
        f"interpreter; this run's virtualenv is built from `{base_interpreter()}`.",
        "",
        "| interpreter | version | median ms | min ms | slower than the fastest |",
        "|---|---|---|---|---|",
    ]
    for python, values in timings.items():
        version = subprocess.run([python, "--version"], capture_output=True, text=True).stdout.split()[-1]
        median = statistics.median(values)
        lines.append(
            f"| `{python}` | {version} | {median:.1f} | {min(values):.1f} | {median / fastest:.2f}x |"
        )
    report = "\n".join(lines)
    print(report)
    write_section("interpreter", report)


if __name__ == "__main__":
    main()

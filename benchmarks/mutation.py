"""Mutation testing of the core modules with mutmut; writes ``benchmarks/results/mutation.md``.

Run with ``make mutation`` (not in CI: it takes a long time). The modules and the test
files that may kill their mutants are configured in ``[tool.mutmut]`` of ``pyproject.toml``;
mutmut's stats pass maps every test to the functions it reaches, and each mutant then runs
only the tests that reach it.

Statuses: *killed* (a test failed), *timeout* (the mutant made a test hang: detected),
*survived* (every test passed: a missing test, or an equivalent mutant), *no tests* (no
selected test reaches the function in-process; code that only runs inside dask worker
processes is not traced). Score = (killed + timeout) / (mutants − no tests − not checked).
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import signal
import subprocess
import sys
import time

import psutil

RESULTS = os.path.join(os.path.dirname(__file__), "results", "mutation.md")
MUTMUT = [sys.executable, "-m", "mutmut"]


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.1f} GiB RAM, Python {platform.python_version()}"


def _statuses() -> dict[str, str]:
    out = subprocess.run(MUTMUT + ["results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            res[name] = status
    return res


def _module(mutant: str) -> str:
    return mutant.split(".x_")[0].split(".xǁ")[0]


def _diff(mutant: str) -> str:
    out = subprocess.run(MUTMUT + ["show", mutant], capture_output=True, text=True).stdout
    lines = [ln for ln in out.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return " / ".join(ln.strip() for ln in lines)[:160]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--report-only", action="store_true", help="summarise the last run, do not run")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop the run after this many minutes (unchecked mutants are reported as such)")
    ap.add_argument("modules", nargs="*",
                    help="run only these modules' mutants (dotted names, e.g. hvrt_dask.sae.stats; "
                         "mutmut keeps earlier results, so modules can be run in turns)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if not args.report_only:
        # mutmut runs the tests from its mutants/ copy: the copy must win over the editable install
        env = {**os.environ, "PYTHONPATH": ""}
        names = [f"{m}.x*" for m in args.modules]
        # its own session: a time limit stops mutmut and its children, and nothing else
        proc = subprocess.Popen(MUTMUT + ["run", "--max-children", str(args.max_children), *names], env=env,
                                stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=None if args.time_limit is None else 60 * args.time_limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    wall = time.perf_counter() - t0
    st = _statuses()
    per = collections.defaultdict(collections.Counter)
    for name, status in st.items():
        per[_module(name)][status] += 1
    rows = []
    tot = collections.Counter()
    for mod in sorted(per):
        c = per[mod]
        tot.update(c)
        n = sum(c.values())
        reached = n - c["no tests"] - c["not checked"]
        score = (c["killed"] + c["timeout"]) / reached if reached else float("nan")
        rows.append(f"| `{mod}` | {n} | {c['killed']} | {c['timeout']} | {c['survived']} | {c['no tests']} "
                    f"| {c['not checked']} | {100 * score:.1f} % |")
    survivors = [n for n, s in st.items() if s == "survived"]
    lines = [
        "# Mutation testing (mutmut)",
        "",
        f"Machine: {_machine()}. Run: `make mutation` ({wall / 60:.1f} min wall"
        + (", report only" if args.report_only else f", {args.max_children} parallel children") + ").",
        "Configuration: `[tool.mutmut]` in `pyproject.toml` (modules and the test files that may kill them).",
        "",
        "| module | mutants | killed | timeout | survived | no tests | not checked | score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Score = (killed + timeout) / (mutants − no tests − not checked). *No tests*: no selected test reaches",
        "the function in the test process (worker-only code is not traced by mutmut). *Not checked*: the run",
        "stopped (``--time-limit``) before mutmut reached them.",
        "",
        f"## Survivors ({len(survivors)})",
        "",
        *(f"- `{n}`: {_diff(n)}" for n in survivors[:400]),
    ]
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    notes = ""
    if os.path.exists(RESULTS):  # the hand-written notes (per-module runs, equivalent mutants) stay
        with open(RESULTS) as f:
            old = f.read()
        if "\n## Notes" in old:
            notes = old[old.index("\n## Notes"):]
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines) + "\n" + notes)
    print("\n".join(lines[:8 + len(rows)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run every benchmark, one after another, from the repository root: `python -m benchmarks.run [name ...]`.
`--quick` runs each with small counts (BENCH_QUICK=1), for CI: it proves they still run, it measures
nothing."""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = sorted(script.stem.removeprefix("bench_") for script in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="name", help=f"default: all of {', '.join(NAMES)}")
    parser.add_argument("--quick", action="store_true", help="small counts, no goal judged (BENCH_QUICK=1)")
    args = parser.parse_args(argv)
    if unknown := [name for name in args.names if name not in NAMES]:
        parser.error(f"no benchmark named {', '.join(unknown)}; the benchmarks are {', '.join(NAMES)}")
    failed = []
    for name in args.names or NAMES:
        print(f"\n### bench_{name}.py", flush=True)
        started = time.monotonic()
        ok = run_quick(name) if args.quick else run_apart(name)
        print(
            f"### bench_{name}.py: {'done' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s",
            flush=True,
        )
        if not ok:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def run_apart(name: str) -> bool:
    """A measurement: each benchmark in a fresh process, so that none inherits another's memory or imports."""
    return subprocess.run([sys.executable, "-m", f"benchmarks.bench_{name}"], cwd=HERE.parent).returncode == 0


def run_quick(name: str) -> bool:
    """A check that it still runs: in this process, so that torch is imported once for all of them (about
    10 s each on a 2-core machine, most of a quick run)."""
    os.environ["BENCH_QUICK"] = "1"
    try:
        runpy.run_module(f"benchmarks.bench_{name}", run_name="__main__", alter_sys=True)
    except SystemExit as exc:  # one benchmark's exit never ends the others
        return exc.code in (0, None)
    except Exception:
        traceback.print_exc()
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())

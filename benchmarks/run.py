"""Run every benchmark, one after another, from the repository root: `python -m benchmarks.run [name ...]`."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    scripts = {script.stem.removeprefix("bench_"): script for script in sorted(HERE.glob("bench_*.py"))}
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Run the benchmarks (benchmarks/bench_NAME.py), each in its own process; all by default.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of: {', '.join(scripts)}")
    args = parser.parse_args(argv)
    if unknown := [name for name in args.names if name not in scripts]:
        parser.error(f"no benchmark named {', '.join(unknown)}; there are: {', '.join(scripts)}")
    failed = 0
    for name, script in scripts.items():
        if args.names and name not in args.names:
            continue
        print(f"\n### {script.name}", flush=True)
        module = f"benchmarks.{script.stem}"
        failed += subprocess.run([sys.executable, "-m", module], cwd=HERE.parent).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU first light: Noisett's engine on a full-size HiDream-I1 pipeline with random weights (the same
compute as the real model; nothing is downloaded), measured in one run that fits 8 minutes on an H200.

It measures seconds per 1024² image for Fast, Dev and Full through Noisett's Engine and through a plain
`pipe(...)` call with the same arguments (min and median after warm-up), the peak GPU memory of each,
the cost of a style switch with a real-rank LoRA, `count=4` in one batch against four single calls, and
int8 and NF4 quantization where bitsandbytes is importable. It prints one table and writes
`first_light.json` to $OUT (or --out), after every section, so a cut-off run still leaves its figures.

    python benchmarks/gpu/first_light.py [--dry-run] [--out DIR] [--budget S] [--started EPOCH]
                                         [--only fast,dev,full,lora,batch,nf4,int8]

`--dry-run` runs the same code on the demo model's tiny shapes on the CPU, in about a minute (CI
runs it: tests/test_first_light.py).
benchmarks/gpu/README.md says what to carry to a GPU machine and the exact command.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "src")]  # the repo's src travels; no install needed

NEEDED = ("torch", "diffusers", "transformers", "peft", "accelerate", "pydantic", "pydantic_settings")
# build and calibrate always run; these can be chosen with --only (a second run for what the first skipped).
SECTIONS = ("fast", "dev", "full", "lora", "batch", "nf4", "int8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, for CI")
    parser.add_argument("--out", type=Path, default=None, help="folder for first_light.json (default $OUT)")
    parser.add_argument("--budget", type=float, default=None, help="seconds, from --started (GPU: 450)")
    parser.add_argument("--started", type=float, default=None, help="epoch seconds the command started")
    parser.add_argument(
        "--only", default="", help=f"comma-separated sections to run (of {', '.join(SECTIONS)}); default all"
    )
    args = parser.parse_args(argv)
    only = {name for name in args.only.split(",") if name}
    if only - set(SECTIONS):
        parser.error(f"unknown sections {sorted(only - set(SECTIONS))}: choose from {', '.join(SECTIONS)}")
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"missing packages: {', '.join(missing)}; carry their wheels (benchmarks/gpu/README.md)")
        return 2
    out = args.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="first-light-"))
    started = args.started or time.time()
    budget = args.budget if args.budget is not None else (600.0 if args.dry_run else 450.0)
    from measure import Bench, profiles  # torch and diffusers load here, after the check above

    profile = profiles()["dry" if args.dry_run else "gpu"]
    if profile.device == "cuda" and not torch_has_cuda():
        print("no CUDA device: run with --dry-run on a CPU")
        return 2
    bench = Bench(profile, out, deadline=started + budget, only=only)
    bench.run()
    print_table(bench.results)
    print(f"\nwrote {bench.json_path} ({time.time() - started:.0f} s since the command started)")
    return 1 if bench.results["errors"] else 0


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _gib(value: float | None) -> str:
    return "n/a (CPU)" if value is None else f"{value:.1f} GiB"


def _run(stats: dict[str, float]) -> str:
    return f"{stats['min_s']:.2f} / {stats['median_s']:.2f} s"


def table(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The one table: (what, figures) rows."""
    sections, rows = results["sections"], []
    if "build" in sections:
        b = sections["build"]
        weights = sum(b["weights_gib"].values())
        rows.append(
            (
                "pipeline built (meta → device, noise)",
                f"{b['build_s']:.1f} s: {b['parameters_b']:.2f} B "
                f"parameters, {weights:.1f} GiB in {b['dtype']}, {b['side']}² images",
            )
        )
    if "calibrate" in sections:
        c = sections["calibrate"]
        rows.append(("calibration", f"{c['per_step_s']:.3f} s per step + {c['fixed_s']:.2f} s per image"))
    for variant in ("fast", "dev", "full"):
        if variant in sections:
            v = sections[variant]
            rows.append(
                (
                    f"{variant}: {v['steps']} steps, guidance {v['guidance']} (min / median)",
                    f"engine {_run(v['engine'])}, plain {_run(v['plain'])}, engine/plain "
                    f"{v['engine_over_plain_median']:.3f}, peak {_gib(v['peak_gib'])}, "
                    f"{v['engine']['runs']} pairs",
                )
            )
    if "lora" in sections:
        lo = sections["lora"]
        rows.append(
            (
                f"style switch, rank-{lo['rank']} LoRA ({lo['adapter_file_mib']:.0f} MiB)",
                f"load {lo['load_s'][0]:.2f} s once, switch {lo['switch_ms_median']:.2f} ms, same "
                f"adapter {lo['same_adapter_ms_median']:.2f} ms",
            )
        )
        rows.append(
            (
                "fast image with / without the adapter",
                f"{lo['image_s_with']:.2f} / {lo['image_s_without']:.2f} s = {lo['with_over_without']:.3f}"
                f" (changes the output: {lo['adapter_changes_output']})",
            )
        )
    if "batch" in sections:
        ba = sections["batch"]
        rows.append(
            (
                "count=4: four single calls / one batch",
                f"{ba['four_singles_s']:.2f} / {ba['batched_s']:.2f} s = {ba['singles_over_batched']:.2f}×, "
                f"batch peak {_gib(ba['batched_peak_gib'])}, max pixel difference "
                f"{ba['max_pixel_difference_batched_vs_alone']}",
            )
        )
    for mode in ("nf4", "int8"):
        if mode in sections:
            q = sections[mode]
            over = q["over_bf16_engine"]
            rows.append(
                (
                    f"NOISETT_QUANTIZE={mode} (transformer + Llama)",
                    f"fast {q['fast_image_s']:.2f} s"
                    + (f" (×{over:.2f} bf16)" if over else "")
                    + f", peak {_gib(q['peak_gib'])}, weights {sum(q['weights_gib'].values()):.1f} GiB, "
                    f"with model offload about {_gib(q['model_offload_estimate_gib'])}",
                )
            )
    rows += [(f"skipped: {name}", reason) for name, reason in results["skipped"].items()]
    rows += [("error", error) for error in results["errors"]]
    return rows


def print_table(results: dict[str, Any]) -> None:
    rows = table(results)
    width = max(len(label) for label, _ in rows)
    print(f"\n== GPU first light: {results['machine']['device']} ({results['scale']} scale)")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())

"""GPU cold start: the full-size HiDream-I1 transformer (random weights, bf16, about 32 GiB) written as
safetensors to local disk, then loaded onto the GPU through today's path and through Noisett's
streaming loader, each in a fresh process; and, where bitsandbytes is importable, an NF4-prepared copy
(quantized once, saved, loaded without quantizing at start).

The machine has 64 GiB of disk: the whole 58 GiB pipeline does not fit beside the wheels, so the
transformer (55 % of the bytes) is written alone and the figures are scaled to the pipeline by bytes.

    python benchmarks/gpu/cold_start.py [--dry-run] [--out DIR]

Each path reports seconds from its process start to the component on the device, GiB/s and peak host
RSS; `cold_start.json` goes to $OUT (or --out), rewritten after each path. The page cache is dropped
between paths where the machine allows it (`cold_cache` says whether it did). `--dry-run` runs the same
code on the demo model's tiny transformer on the CPU (tests/test_cold_start_gpu.py).
Goals (issue 23): the full bf16 pipeline ready in ≤ 20 s from local disk (about 3 GiB/s), NF4 in ≤ 10 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "src")]  # the repo's src travels; no install needed

GIB = 1024**3
PIPELINE_GIB = 57.6  # the full pipeline's weights in bf16 (DESIGN.md, measured on the H200)
# NF4 transformer (~9 GiB) and Llama (~5.3 GiB) plus T5, CLIPs and VAE in bf16 (~10.7 GiB); first_light's
# NF4 row measured 28.1 GiB peak on the GPU, activations included.
NF4_PIPELINE_GIB = 25.0
CLASS = ["diffusers", "HiDreamImageTransformer2DModel"]
PATHS = ("today", "streaming", "nf4")


def write_transformer(folder: Path, dry_run: bool) -> int:
    """The random transformer as safetensors in 5 GB shards (as the HiDream repos ship it); its bytes."""
    import torch
    from full_size import build_pipeline

    device, dtype = ("cpu", torch.float32) if dry_run else ("cuda", torch.bfloat16)
    pipe = build_pipeline("tiny" if dry_run else "full", device, dtype)
    pipe.transformer.save_pretrained(folder / "transformer", max_shard_size="5GB")
    (folder / "model_index.json").write_text(json.dumps({"transformer": CLASS}))
    return sum(p.stat().st_size for p in (folder / "transformer").glob("*.safetensors"))


def write_nf4(folder: Path, target: Path) -> None:
    """The transformer quantized to NF4 once and saved: what `model prepare --quantize nf4` writes."""
    import torch
    from diffusers import BitsAndBytesConfig, HiDreamImageTransformer2DModel

    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    model = HiDreamImageTransformer2DModel.from_pretrained(
        folder / "transformer", quantization_config=config, torch_dtype=torch.bfloat16
    )
    model.save_pretrained(target / "transformer")
    del model
    torch.cuda.empty_cache()


def child(path: str, folder: Path, device: str) -> dict[str, Any]:
    """Load the transformer once, by `path`, and report (runs in its own process)."""
    import torch
    from diffusers import HiDreamImageTransformer2DModel

    from noisett_mcp.engine.streaming import component_shards, load_component
    from noisett_mcp.weights.files import ModelFiles
    from noisett_mcp.weights.stages import LoadStages, process_age

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    load_started = time.perf_counter()
    if path == "today":  # from_pretrained into CPU memory, then .to(device)
        HiDreamImageTransformer2DModel.from_pretrained(folder / "transformer", torch_dtype=dtype).to(device)
    elif path == "streaming":
        files = ModelFiles(folder)
        shards = component_shards(files, "transformer")
        load_component(files, "transformer", CLASS, shards, device, dtype, LoadStages())
    else:  # the NF4-prepared copy: from_pretrained reads the quantized weights, no quantizing
        HiDreamImageTransformer2DModel.from_pretrained(folder / "transformer", device_map=device)
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "seconds": process_age(),  # from the process's start: imports included
        "load_seconds": time.perf_counter() - load_started,
        "gib": sum(p.stat().st_size for p in (folder / "transformer").glob("*.safetensors")) / GIB,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def drop_page_cache() -> bool:
    """Whether the kernel's page cache could be dropped (root on the GPU machine: a cold disk read)."""
    try:
        subprocess.run(["sync"], check=True, timeout=120)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def run_path(path: str, folder: Path, device: str) -> dict[str, Any]:
    cold = device == "cuda" and drop_page_cache()  # never on a shared CI machine
    command = [sys.executable, __file__, "--child", path, "--folder", str(folder), "--device", device]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode:
        return {"error": done.stderr[-1500:], "cold_cache": cold}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "cold_cache": cold}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the tiny transformer on the CPU, for CI")
    parser.add_argument("--out", type=Path, default=None, help="folder for cold_start.json (default $OUT)")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.device)))
        return 0
    out = args.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="cold-start-"))
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    work = Path(tempfile.mkdtemp(prefix="cold-start-weights-", dir=os.environ.get("COLD_START_DIR")))
    results: dict[str, Any] = {"device": device, "paths": {}, "skipped": {}}
    try:
        started = time.time()
        size = write_transformer(work / "bf16", args.dry_run)
        results["transformer_gib"] = size / GIB
        results["write_seconds"] = time.time() - started
        for path in ("today", "streaming"):
            results["paths"][path] = run_path(path, work / "bf16", device)
            _save(out, results)
        if args.dry_run or importlib.util.find_spec("bitsandbytes") is None:
            results["skipped"]["nf4"] = "bitsandbytes needs a CUDA GPU" if args.dry_run else "no bitsandbytes"
        else:
            write_nf4(work / "bf16", work / "nf4")
            results["paths"]["nf4"] = run_path("nf4", work / "nf4", device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _summarize(results)
    _save(out, results)
    print(json.dumps(results, indent=1))
    return 0 if all("error" not in r for r in results["paths"].values()) else 1


def _summarize(results: dict[str, Any]) -> None:
    """GiB/s of each path's load, and the full pipeline's seconds: the imports plus the load scaled by
    bytes (bf16: 57.6 GiB; NF4: the transformer's and Llama's 4-bit weights plus the rest in bf16)."""
    full_gib = {"today": PIPELINE_GIB, "streaming": PIPELINE_GIB, "nf4": NF4_PIPELINE_GIB}
    for path, result in results["paths"].items():
        if "load_seconds" in result:
            result["gib_per_s"] = round(result["gib"] / result["load_seconds"], 3)
            imports = result["seconds"] - result["load_seconds"]
            scaled = imports + result["load_seconds"] * full_gib[path] / result["gib"]
            result["scaled_pipeline_seconds"] = round(scaled, 1)


def _save(out: Path, results: dict[str, Any]) -> None:
    (out / "cold_start.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())

"""The fast path against plain diffusers on a full-size HiDream-I1 pipeline (random weights, real compute):
the sync-free MoE and compiled blocks (engine/fast.py), and NOISETT_QUANTIZE=fp8, in one run.

In priority order, each part skipped (with the reason) when its estimate does not fit the time left:
- `forward`: one transformer forward on the inputs a pipeline call captured, plain and fast, 1 image and the
  CFG batch of 2: min and median, the FLOPs, the floor (FLOPs ÷ 790 TFLOP/s, an 8192³ bf16 matmul on an
  H200), the kernel time by kind and the host-synchronising calls per forward (torch.profiler);
- `compile`: the compile at load, cold, then again after `torch._dynamo.reset()` from inductor's disk cache
  (what a restart with NOISETT_COMPILE_CACHE_DIR costs);
- `fast`, `dev`, `full`: whole images through Noisett's engine with the fast path against plain diffusers
  (the same pipe with the stock router and `set_stance("force_eager")`), same seeds, adjacent pairs: min,
  median, the ratio, the largest pixel difference and the peak memory;
- `fp8`: the transformer's linears in float8 (compiled), one forward and a Fast image (last: it changes the
  weights for good).
`fast_path.json` is rewritten after every part, so a run cut short keeps its figures.

    python benchmarks/gpu/fast_path.py [--dry-run] [--out DIR] [--budget S] [--started EPOCH] [--only A,B]

`--dry-run` runs every part but fp8 on the demo model's shapes, in float32 on the CPU (CI:
tests/test_fast_path_bench.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "src")]  # the repo's src travels; no install needed

PARTS = ("forward", "compile", "forward_fast", "fast", "dev", "full", "fp8")
MEASURED_MATMUL = 790e12  # FLOP/s of an 8192³ bf16 matmul on the H200 (../shared/gpu/beyond.py)
SEED, PROMPT = 7, "a lighthouse at dusk, flat vector illustration"
GPU_ESTIMATE_S = {
    "forward": 40,
    "compile": 150,
    "forward_fast": 20,
    "fast": 20,
    "dev": 30,
    "full": 80,
    "fp8": 200,
}
SYNC_EVENTS = ("cudastreamsynchronize", "cudamemcpyasync", "aten::_local_scalar_dense", "aten::item")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="demo shapes on the CPU, for CI")
    parser.add_argument("--out", type=Path, default=None, help="folder for fast_path.json (default $OUT)")
    parser.add_argument("--budget", type=float, default=None, help="seconds from --started (GPU: 420)")
    parser.add_argument("--started", type=float, default=None, help="epoch seconds the command started")
    parser.add_argument("--only", default="", help=f"comma-separated parts (of {', '.join(PARTS)})")
    args = parser.parse_args(argv)
    only = {name for name in args.only.split(",") if name}
    if only - set(PARTS):
        parser.error(f"unknown parts {sorted(only - set(PARTS))}: choose from {', '.join(PARTS)}")
    missing = [
        n
        for n in ("torch", "diffusers", "transformers", "pydantic_settings")
        if not importlib.util.find_spec(n)
    ]
    if missing:
        print(f"missing packages: {', '.join(missing)}; carry their wheels (benchmarks/gpu/README.md)")
        return 2
    out = args.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="fast-path-"))
    started = args.started or time.time()
    budget = args.budget if args.budget is not None else (1500.0 if args.dry_run else 420.0)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU")
        return 2
    bench = FastPathBench(out, started + budget, only or set(PARTS), args.dry_run)
    bench.run()
    for line in bench.summary():
        print(line)
    print(f"\nwrote {bench.json_path} ({time.time() - started:.0f} s since the command started)")
    return 1 if bench.results["errors"] else 0


def _stats(seconds: list[float]) -> dict[str, float]:
    return {"min_s": min(seconds), "median_s": statistics.median(seconds), "runs": len(seconds)}


class FastPathBench:
    def __init__(self, out: Path, deadline: float, parts: set[str], dry: bool) -> None:
        import torch
        from full_size import build_pipeline
        from measure import describe_machine

        self.torch, self.deadline, self.parts, self.dry = torch, deadline, parts, dry
        self.cuda = not dry
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.json_path = out, out / "fast_path.json"
        self.results: dict[str, Any] = {
            "machine": describe_machine(),
            "errors": [],
            "parts": {},
            "skipped": {},
        }
        self.device, self.dtype = ("cuda", torch.bfloat16) if self.cuda else ("cpu", torch.float32)
        started = time.perf_counter()
        self.pipe = build_pipeline("tiny" if dry else "full", self.device, self.dtype)
        self.results["build_s"] = round(time.perf_counter() - started, 2)
        self.variants = {"fast": (1, 0.0), "dev": (2, 0.0), "full": (2, 5.0)} if dry else None
        self.inputs = self.capture_inputs()
        self.engine: Any = None

    # --- plumbing ---
    def save(self) -> None:
        self.json_path.write_text(json.dumps(self.results, indent=2, default=str))

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def part(self, name: str, run: Callable[[], dict]) -> None:
        left, needed = self.deadline - time.time(), (5 if self.dry else GPU_ESTIMATE_S[name])
        if name not in self.parts:
            self.results["skipped"][name] = "not asked for (--only)"
        elif left < needed:
            self.results["skipped"][name] = f"needs about {needed} s, {left:.0f} s left"
        else:
            started = time.time()
            try:
                self.results["parts"][name] = run() | {"part_s": round(time.time() - started, 1)}
            except Exception as exc:  # record it and go on: the other parts' figures still count
                self.results["errors"].append(f"{name}: {type(exc).__name__}: {str(exc)[:400]}")
                traceback.print_exc()
        self.save()

    def run(self) -> None:
        self.part("forward", self.forward_plain)
        self.part("compile", self.compile)
        if self.engine is None:  # no compile part: the engine's fast path without it
            self.engine = self.make_engine(compile_="off")
        self.part("forward_fast", self.forward_figures)
        for variant in ("fast", "dev", "full"):
            self.part(variant, lambda v=variant: self.variant(v))
        if (why := self.fp8_unavailable()) is not None:
            self.results["skipped"]["fp8"] = why
        else:
            self.part("fp8", self.fp8)
        if self.cuda:
            self.results["max_memory_allocated_gib"] = self.torch.cuda.max_memory_allocated() / 2**30
        self.save()

    # --- the transformer alone ---
    def capture_inputs(self) -> dict[int, dict]:
        """The transformer's keyword arguments at batch 1 and 2 (CFG), from one-step pipeline calls."""
        captured: dict[int, dict] = {}

        def grab(module: Any, args: Any, kwargs: dict) -> None:
            kw = {k: v.clone() if hasattr(v, "clone") else v for k, v in kwargs.items() if k != "return_dict"}
            captured[kw["hidden_states"].shape[0]] = kw

        handle = self.pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)
        side = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        for guidance in (0.0, 5.0):
            self.pipe(
                prompt=PROMPT,
                width=side,
                height=side,
                num_inference_steps=1,
                guidance_scale=guidance,
                generator=self.torch.Generator("cpu").manual_seed(SEED),
                output_type="latent",
            )
        handle.remove()
        return captured

    def forward(self, batch: int) -> None:
        with self.torch.no_grad():
            self.pipe.transformer(**self.inputs[batch], return_dict=False)

    def timed_forward(self, batch: int, runs: int) -> dict[str, float]:
        self.forward(batch)
        seconds = []
        for _ in range(runs):
            self.sync()
            started = time.perf_counter()
            self.forward(batch)
            self.sync()
            seconds.append(time.perf_counter() - started)
        return _stats(seconds)

    def flops(self, batch: int) -> float:
        """Linear layers and attention, counted on the stock path (its experts are real Linear calls)."""
        torch, total = self.torch, [0.0]

        def linear(module: Any, inputs: Any, output: Any) -> None:
            total[0] += 2.0 * inputs[0].numel() * module.out_features

        hooks = [
            m.register_forward_hook(linear)
            for m in self.pipe.transformer.modules()
            if isinstance(m, torch.nn.Linear)
        ]
        functional, real = torch.nn.functional, torch.nn.functional.scaled_dot_product_attention

        def sdpa(q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> Any:
            total[0] += 4.0 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
            return real(q, k, v, *args, **kwargs)

        functional.scaled_dot_product_attention = sdpa
        try:
            self.forward(batch)
        finally:
            functional.scaled_dot_product_attention = real
            for hook in hooks:
                hook.remove()
        return total[0]

    def profile(self) -> dict[str, Any]:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.forward(1)
        self.sync()
        with profile(activities=activities) as prof:
            self.forward(1)
            self.sync()
        kinds, syncs = {"gemm": 0.0, "attention": 0.0, "other": 0.0}, 0
        for event in prof.key_averages():
            name, device_us = event.key.lower(), getattr(event, "self_device_time_total", 0.0) or 0.0
            syncs += event.count if name in SYNC_EVENTS else 0
            if device_us <= 0 or name.startswith(("aten::", "cuda")):
                continue
            if any(k in name for k in ("gemm", "cutlass", "nvjet", "xmma", "cublas", "matmul", "grouped")):
                kinds["gemm"] += device_us / 1e3
            elif any(k in name for k in ("flash", "fmha", "attention", "cudnn")):
                kinds["attention"] += device_us / 1e3
            else:
                kinds["other"] += device_us / 1e3
        return {"kernel_ms_by_kind": kinds, "kernel_ms": sum(kinds.values()), "host_sync_like_calls": syncs}

    def forward_figures(self) -> dict[str, Any]:
        runs = 2 if self.dry else 5
        figures: dict[str, Any] = {f"batch{b}": self.timed_forward(b, runs) for b in (1, 2)}
        return figures | self.profile()

    def forward_plain(self) -> dict[str, Any]:
        flops = {b: self.flops(b) for b in (1, 2)}
        plain = self.forward_figures()
        floor = {f"batch{b}_ms": f / MEASURED_MATMUL * 1e3 for b, f in flops.items()}
        return {"tflop": {f"batch{b}": f / 1e12 for b, f in flops.items()}, "floor": floor, "plain": plain}

    # --- the engine ---
    def make_engine(self, compile_: str) -> Any:
        from noisett_mcp.config import Settings
        from noisett_mcp.engine.config import EngineConfig
        from noisett_mcp.engine.pipeline import Engine

        folder = Path(tempfile.mkdtemp(prefix="fast-path-"))
        self.settings = Settings(
            model="fast-path/random-HiDream-I1",
            device=self.device,
            data_dir=folder / "data",
            model_cache_dir=folder / "cache",
            preload=False,
            compile=compile_,
            compile_cache_dir=self.out / "inductor-cache" if compile_ == "on" else None,
        )
        return Engine(EngineConfig.from_settings(self.settings), pipe=self.pipe)

    def compile(self) -> dict[str, Any]:
        import torch._dynamo

        from noisett_mcp.engine.fast import compile_blocks, warm_up

        started = time.perf_counter()
        self.engine = self.make_engine(compile_="on")
        cold = time.perf_counter() - started
        torch._dynamo.reset()  # forget the graphs in memory; inductor's disk cache stays, as after a restart
        compile_blocks(self.pipe.transformer)
        warm = warm_up(self.pipe)
        return {
            "cold_s": cold,
            "warm_cache_s": warm,
            "moe_layers": self.engine.fast.moe_layers,
            "compiled_blocks": self.engine.fast.compiled_blocks,
        }

    def plain_images(self, steps: int, guidance: float) -> Any:
        """Plain diffusers on the same pipe: the stock router, and the compiled blocks run eagerly."""
        from noisett_mcp.engine.moe import MOE_CLASS

        fast = {
            m: vars(m).pop("moe_infer")
            for m in self.pipe.transformer.modules()
            if isinstance(m, MOE_CLASS) and "moe_infer" in vars(m)
        }
        # The compiled engine's style slot (engine/adapters.py) is not plain diffusers: off for this run.
        slot = bool(self.pipe.get_list_adapters())
        if slot:
            self.pipe.disable_lora()
        try:
            with self.torch.compiler.set_stance("force_eager"):
                return self.pipe(
                    prompt=PROMPT,
                    negative_prompt=None,
                    width=self.side,
                    height=self.side,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=self.torch.Generator("cpu").manual_seed(SEED),
                ).images[0]
        finally:
            for module, method in fast.items():
                module.moe_infer = method
            if slot:
                self.pipe.enable_lora()

    def engine_image(self, steps: int, guidance: float) -> Any:
        from noisett_mcp.schemas import GenerationSpec

        spec = GenerationSpec(
            prompt=PROMPT,
            width=self.side,
            height=self.side,
            steps=steps,
            guidance=guidance,
            seeds=[SEED],
            model=self.settings.model,
            variant="full",
        )
        return self.engine.generate(spec, 0, lambda step: None, lambda: False)

    @property
    def side(self) -> int:
        return self.engine.info.render_side

    def timed(self, run: Callable[[], Any]) -> tuple[float, float | None, Any]:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = run()
        self.sync()
        peak = self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        return time.perf_counter() - started, peak, result

    def variant(self, name: str) -> dict[str, Any]:
        import numpy as np

        from noisett_mcp.schemas import VARIANT_DEFAULTS

        steps, guidance = (self.variants or VARIANT_DEFAULTS)[name]
        fast, plain, peaks, difference = [], [], [], 0
        for _ in range(2 if self.dry else 3):
            f_s, f_peak, f_image = self.timed(lambda: self.engine_image(steps, guidance))
            p_s, p_peak, p_image = self.timed(lambda: self.plain_images(steps, guidance))
            fast.append(f_s)
            plain.append(p_s)
            peaks += [f_peak, p_peak]
            pair = np.abs(np.asarray(f_image, np.int16) - np.asarray(p_image, np.int16)).max()
            difference = max(difference, int(pair))
        return {
            "steps": steps,
            "guidance": guidance,
            "fast": _stats(fast),
            "plain": _stats(plain),
            "fast_over_plain_median": statistics.median(fast) / statistics.median(plain),
            "max_pixel_difference": difference,
            "peak_gib": max(p for p in peaks if p is not None) if self.cuda else None,
        }

    def fp8_unavailable(self) -> str | None:
        if not self.cuda or self.torch.cuda.get_device_capability() < (8, 9):
            return "needs a CUDA GPU of compute capability 8.9 or newer"
        if importlib.util.find_spec("torchao") is None:
            return "torchao is not installed (carry its wheel)"
        return None

    def fp8(self) -> dict[str, Any]:
        from noisett_mcp.engine.fast import check_fp8, quantize_fp8, warm_up

        check_fp8(self.device)
        layers = quantize_fp8(self.pipe.transformer)
        warm = warm_up(self.pipe)  # the blocks are compiled already (the compile part): they compile again
        steps, guidance = 16, 0.0
        image_s, peak, _ = self.timed(lambda: self.engine_image(steps, guidance))
        return {
            "layers": layers,
            "compile_s": warm,
            "forward": self.forward_figures(),
            "fast_image_s": image_s,
            "peak_gib": peak,
        }

    def summary(self) -> list[str]:
        parts = self.results["parts"]
        lines = [f"== fast path: {self.results['machine']['device']}"]
        if "forward" in parts:
            fw = parts["forward"]
            fast = parts.get("forward_fast", {})
            lines.append(
                f"  forward, 1 image: plain {fw['plain']['batch1']['median_s'] * 1e3:.1f} ms, fast "
                f"{fast.get('batch1', {}).get('median_s', float('nan')) * 1e3:.1f} ms, floor "
                f"{fw['floor']['batch1_ms']:.1f} ms; host syncs plain {fw['plain']['host_sync_like_calls']}, "
                f"fast {fast.get('host_sync_like_calls')}"
            )
        if "compile" in parts:
            c = parts["compile"]
            lines.append(f"  compile at load: cold {c['cold_s']:.1f} s, warm cache {c['warm_cache_s']:.1f} s")
        for name in ("fast", "dev", "full"):
            if name in parts:
                v = parts[name]
                lines.append(
                    f"  {name}: fast path {v['fast']['min_s']:.2f} / {v['fast']['median_s']:.2f} s, plain "
                    f"{v['plain']['min_s']:.2f} / {v['plain']['median_s']:.2f} s (min / median), ratio "
                    f"{v['fast_over_plain_median']:.3f}, max pixel difference {v['max_pixel_difference']}"
                )
        lines += [f"  skipped {name}: {why}" for name, why in self.results["skipped"].items()]
        return lines + [f"  error: {error}" for error in self.results["errors"]]


if __name__ == "__main__":
    sys.exit(main())

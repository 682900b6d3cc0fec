"""The measurements of first_light.py, in priority order, each fitted to the time left.

A calibration (1- and 3-step images) gives seconds = a + b·steps·batch (CFG doubles the batch); each
section is estimated from that before it runs, and skipped, with the reason recorded, if it does not
fit. Every variant gets one engine/plain pair first; the time left before the quantization sections
buys more pairs, round-robin. Quantization comes last: it rebuilds the transformer and Llama.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from full_size import build_pipeline, fresh_component, quantize, weight_bytes
from PIL import Image

from noisett_mcp.config import Settings
from noisett_mcp.engine.config import EngineConfig
from noisett_mcp.engine.demo_loras import write_random_lora
from noisett_mcp.engine.moe import remove_fast_moe
from noisett_mcp.engine.pipeline import Engine, engine_dtype
from noisett_mcp.schemas import GenerationSpec
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.styles.manifest import Style

SEED = 7
PROMPT = "a lighthouse at dusk, flat vector illustration"
QUANTIZED = ("transformer", "text_encoder_4")  # what NOISETT_QUANTIZE quantizes
MANIFEST = """name = "{name}"
title = "First light {name}"
description = "A random rank-{rank} LoRA on the attention projections, for timing."
weights = "{name}.safetensors"
base_models = ["*"]
"""


@dataclass(frozen=True)
class Profile:
    scale: str  # full_size.Scale
    device: str
    variants: dict[str, tuple[int, float]]  # name → (steps, guidance)
    lora_rank: int
    lora_std: float
    fixed_s: float  # a guess at one section's own setup (LoRA files, a rebuild), for the planner
    max_reps: int = 3


def profiles() -> dict[str, Profile]:
    from noisett_mcp.schemas import VARIANT_DEFAULTS

    fastest_first = {name: VARIANT_DEFAULTS[name] for name in ("fast", "dev", "full")}
    return {
        "gpu": Profile("full", "cuda", fastest_first, lora_rank=32, lora_std=0.02, fixed_s=15.0),
        # One or two steps at 32² and fewer repeats: the code path is the same, and CI's CPU is slow.
        "dry": Profile(
            "tiny",
            "cpu",
            {"fast": (1, 0.0), "dev": (2, 0.0), "full": (2, 5.0)},
            lora_rank=4,
            lora_std=0.25,
            fixed_s=1.0,
            max_reps=2,
        ),
    }


def describe_machine() -> dict[str, object]:
    import torch

    from noisett_mcp.engine.pipeline import library_versions

    versions = library_versions()
    for name in ("peft", "accelerate", "bitsandbytes", "pydantic"):
        spec = importlib.util.find_spec(name)
        versions[name] = __import__(name).__version__ if spec else "not installed"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": gpu or platform.processor() or platform.machine(),
        "cuda": torch.version.cuda,
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu else None,
        "python": platform.python_version(),
        "versions": versions,
    }


def _stats(seconds: list[float]) -> dict[str, float]:
    return {"min_s": min(seconds), "median_s": statistics.median(seconds), "runs": len(seconds)}


class Bench:
    def __init__(self, profile: Profile, out: Path, deadline: float, only: set[str] | None = None) -> None:
        self.profile, self.deadline, self.only = profile, deadline, only or set()
        self.cuda = profile.device.startswith("cuda")
        out.mkdir(parents=True, exist_ok=True)
        self.json_path = out / "first_light.json"
        self.results: dict = {"machine": describe_machine(), "scale": profile.scale, "errors": []}
        self.results |= {"sections": {}, "skipped": {}, "deadline_s": round(deadline - time.time())}
        self.a, self.b = 1.0, 0.1  # seconds = a + b · steps · batch, set by calibrate()
        self.samples: dict[str, dict[str, list]] = {}

    # --- running and timing ---
    def run(self) -> None:
        self.section("build", self.build, lambda: 0.0)
        if self.results["errors"]:
            return
        self.section("calibrate", self.calibrate, lambda: 0.0)
        for variant in self.profile.variants:
            self.section(variant, lambda v=variant: self.variant_pair(v), lambda v=variant: self.pair_cost(v))
        fast_steps = self.profile.variants["fast"][0]
        self.section("lora", self.lora, lambda: self.profile.fixed_s + 3 * self.cost(fast_steps, 0.0))
        self.section("batch", self.batch, lambda: 1.5 * self.cost(fast_steps, 0.0, 4) + 4 * self.cost(1, 0.0))
        self.more_pairs()
        for mode in ("nf4", "int8"):
            if importlib.util.find_spec("bitsandbytes") is None:
                self.results["skipped"][mode] = "bitsandbytes is not installed (carry its wheel)"
            else:
                self.section(mode, lambda m=mode: self.quantized(m), lambda m=mode: self.quantized_cost(m))
        self.save()

    def save(self) -> None:
        self.json_path.write_text(json.dumps(self.results, indent=2, default=str))

    def section(self, name: str, run: Callable[[], dict], estimate: Callable[[], float]) -> None:
        needed, left = estimate(), self.deadline - time.time()
        if self.only and name not in self.only | {"build", "calibrate"}:
            self.results["skipped"][name] = "not asked for (--only)"
        elif needed > left:
            self.results["skipped"][name] = f"needs about {needed:.0f} s, {left:.0f} s left"
        else:
            started = time.time()
            try:
                self.results["sections"][name] = run() | {"section_s": round(time.time() - started, 2)}
            except Exception as exc:  # record it and go on: the other sections' figures still count
                self.results["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
                traceback.print_exc()
                gc.collect()
                if self.cuda:
                    torch.cuda.empty_cache()
        self.save()

    def timed(self, run: Callable[[], object]) -> tuple[float, float | None]:
        """Seconds and peak GPU GiB of one call."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        run()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return seconds, (torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None)

    def cost(self, steps: int, guidance: float, batch: int = 1) -> float:
        return self.a + self.b * steps * batch * (2 if guidance > 1 else 1)

    def pair_cost(self, variant: str) -> float:
        return 2 * self.cost(*self.profile.variants[variant])

    def spec(self, steps: int, guidance: float, seeds: list[int], style: Style | None) -> GenerationSpec:
        return GenerationSpec(
            prompt=PROMPT,
            style=style.name if style else "none",
            style_strength=1.0 if style else 0.0,
            style_sha256=style.sha256 if style else None,
            width=self.side,
            height=self.side,
            steps=steps,
            guidance=guidance,
            seeds=seeds,
            model=self.settings.model,
            variant="full",
        )

    def engine_image(self, steps: int, guidance: float, style: Style | None = None, seed: int = SEED):
        spec = self.spec(steps, guidance, [seed], style)
        return self.engine.generate(spec, 0, lambda step: None, lambda: False, style)

    def plain_images(self, steps: int, guidance: float, seeds: list[int]) -> list[Image.Image]:
        """A plain diffusers call with the engine's arguments."""
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        return self.pipe(
            prompt=PROMPT,
            negative_prompt=None,
            width=self.side,
            height=self.side,
            num_inference_steps=steps,
            guidance_scale=guidance,
            num_images_per_prompt=len(seeds),
            generator=generators if len(seeds) > 1 else generators[0],
            output_type="pil",
        ).images

    # --- sections ---
    def build(self) -> dict:
        device, dtype = self.profile.device, engine_dtype(self.profile.device)
        built = time.perf_counter()
        self.pipe = build_pipeline(self.profile.scale, device, dtype)  # type: ignore[arg-type]
        built = time.perf_counter() - built
        self.folder = Path(tempfile.mkdtemp(prefix="first-light-"))
        self.settings = Settings(
            model="first-light/random-HiDream-I1",
            device=device,
            data_dir=self.folder / "data",
            model_cache_dir=self.folder / "cache",
            preload=False,
            compile="off",  # first light: the engine over plain diffusers; fast_path.py measures the rest
        )
        setup = time.perf_counter()
        # the engine's own setup, on this pipeline
        self.engine = Engine(EngineConfig.from_settings(self.settings), pipe=self.pipe)
        setup = time.perf_counter() - setup
        remove_fast_moe(self.pipe.transformer)  # diffusers' own router, as on 2026-12-04
        self.side = self.engine.info.render_side
        weights = {
            name: weight_bytes(m) / 2**30
            for name, m in self.pipe.components.items()
            if hasattr(m, "parameters")
        }
        params = sum(
            p.numel()
            for m in self.pipe.components.values()
            if hasattr(m, "parameters")
            for p in m.parameters()
        )
        return {
            "build_s": round(built, 2),
            "engine_setup_s": round(setup, 3),
            "parameters_b": round(params / 1e9, 3),
            "weights_gib": {name: round(gib, 3) for name, gib in weights.items()},
            "dtype": str(self.engine.dtype).removeprefix("torch."),
            "side": self.side,
        }

    def calibrate(self) -> dict:
        self.plain_images(2, 0.0, [SEED])  # first run: kernels, allocator, cuBLAS heuristics
        one = self.timed(lambda: self.plain_images(1, 0.0, [SEED]))[0]
        three = self.timed(lambda: self.plain_images(3, 0.0, [SEED]))[0]
        self.plain_images(1, 5.0, [SEED])  # the CFG shapes
        self.engine_image(1, 0.0)  # and the engine's own path
        self.b = max((three - one) / 2, one / 8)  # a floor, in case a busy machine made 3 steps look cheap
        self.a = max(one - self.b, 0.0)
        return {"fixed_s": round(self.a, 3), "per_step_s": round(self.b, 4)}

    def variant_pair(self, variant: str) -> dict:
        """One more engine run and plain run of `variant`, adjacent so that drift cancels."""
        steps, guidance = self.profile.variants[variant]
        runs = self.samples.setdefault(variant, {"engine": [], "plain": [], "peak": []})
        engine = self.timed(lambda: self.engine_image(steps, guidance))
        plain = self.timed(lambda: self.plain_images(steps, guidance, [SEED]))
        runs["engine"].append(engine[0])
        runs["plain"].append(plain[0])
        runs["peak"] += [engine[1], plain[1]]
        return self.variant_summary(variant)

    def variant_summary(self, variant: str) -> dict:
        runs = self.samples[variant]
        engine, plain = _stats(runs["engine"]), _stats(runs["plain"])
        peaks = [p for p in runs["peak"] if p is not None]
        steps, guidance = self.profile.variants[variant]
        return {
            "steps": steps,
            "guidance": guidance,
            "engine": engine,
            "plain": plain,
            "engine_over_plain_median": engine["median_s"] / plain["median_s"],
            "engine_runs_s": runs["engine"],
            "plain_runs_s": runs["plain"],
            "peak_gib": max(peaks) if peaks else None,
        }

    def more_pairs(self) -> None:
        """Spend the time the quantization sections will not need on more pairs, round-robin."""
        coming = [m for m in ("nf4", "int8") if self.will_quantize(m)]
        reserve = sum(self.quantized_cost(mode) for mode in coming)
        for _ in range(self.profile.max_reps - 1):
            for variant in self.profile.variants:
                if (
                    variant not in self.samples
                    or time.time() + self.pair_cost(variant) + reserve > self.deadline
                ):
                    continue
                self.results["sections"][variant] = self.variant_pair(variant)
        self.save()

    def lora(self) -> dict:
        """Two real-rank random LoRAs written as Noisett's styles are, read through its catalog, loaded
        once each and switched with set_adapters by the engine's own StyleAdapters."""
        rank, folder = self.profile.lora_rank, self.folder / "styles"
        for seed, name in enumerate(("first-light-a", "first-light-b"), start=1):
            write_random_lora(
                self.pipe.transformer, folder / f"{name}.safetensors", seed, rank, self.profile.lora_std
            )
            (folder / f"{name}.toml").write_text(MANIFEST.format(name=name, rank=rank))
        styles = StyleCatalog(self.settings, folder=folder).refresh().styles
        a, b = styles["first-light-a"], styles["first-light-b"]
        adapters = self.engine.styles
        load = [self.timed(lambda s=s: adapters.activate(s, 1.0))[0] for s in (a, b)]
        switch = [self.timed(lambda s=s: adapters.activate(s, 1.0))[0] for s in (a, b) * 10]
        same = [self.timed(lambda: adapters.activate(b, 1.0))[0] for _ in range(10)]
        fast_steps = self.profile.variants["fast"][0]
        self.engine_image(1, 0.0, a)  # warm up the adapter's path
        base = self.timed(lambda: self.engine_image(fast_steps, 0.0))[0]
        styled = self.timed(lambda: self.engine_image(fast_steps, 0.0, a))[0]
        changed = np.asarray(self.engine_image(1, 0.0, a)) != np.asarray(self.engine_image(1, 0.0))
        assert a.weights_file is not None
        return {
            "rank": rank,
            "adapter_file_mib": a.weights_file.stat().st_size / 2**20,
            "load_s": load,
            "switch_ms_median": statistics.median(switch) * 1e3,
            "same_adapter_ms_median": statistics.median(same) * 1e3,
            "image_s_without": base,
            "image_s_with": styled,
            "with_over_without": styled / base,
            "adapter_changes_output": bool(changed.any()),
        }

    def batch(self) -> dict:
        """count=4 through the engine: generate_batch (one call, a CPU generator per image) against four
        generate calls, as NOISETT_BATCH=on and off render a request."""
        steps, indices = self.profile.variants["fast"][0], [0, 1, 2, 3]
        four = self.spec(steps, 0.0, [SEED + i for i in indices], None)

        def render(spec: GenerationSpec, indices: list[int]) -> list[Image.Image]:
            return self.engine.generate_batch(spec, indices, lambda step: None, lambda: False)

        render(four.model_copy(update={"steps": 1}), indices)  # warm up the batch's shapes
        batched_images: list[Image.Image] = []
        batched = self.timed(lambda: batched_images.extend(render(four, indices)))
        alone: list[Image.Image] = []  # one at a time: generate(spec, i) is generate_batch(spec, [i])
        singles = [self.timed(lambda i=i: alone.extend(render(four, [i])))[0] for i in indices]
        diff = max(
            int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max())
            for x, y in zip(batched_images, alone, strict=True)
        )
        return {
            "steps": steps,
            "batched_s": batched[0],
            "four_singles_s": sum(singles),
            "singles_over_batched": sum(singles) / batched[0],
            "batched_peak_gib": batched[1],
            "max_pixel_difference_batched_vs_alone": diff,
        }

    def will_quantize(self, mode: str) -> bool:
        installed = importlib.util.find_spec("bitsandbytes") is not None
        return installed and (not self.only or mode in self.only)

    def quantized_cost(self, mode: str) -> float:
        slower = {"nf4": 2.0, "int8": 3.0}[mode]  # guesses: bitsandbytes kernels are slower than bf16
        fast = self.cost(self.profile.variants["fast"][0], 0.0)
        return self.profile.fixed_s + self.cost(1, 0.0) + slower * fast

    def quantized(self, mode: str) -> dict:
        """NOISETT_QUANTIZE=mode: the transformer and Llama quantized, the rest in bf16, all on the GPU."""
        self.engine.styles.retain([])  # unload the adapters: the fresh transformer has none
        layers = 0
        for name in QUANTIZED:
            setattr(self.pipe, name, None)  # let the old weights go before the new ones are made
            gc.collect()
            module = fresh_component(
                self.profile.scale, name, self.profile.device, engine_dtype(self.profile.device)
            )  # type: ignore[arg-type]
            layers += quantize(module, mode, engine_dtype(self.profile.device))  # type: ignore[arg-type]
            setattr(self.pipe, name, module)
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        steps = self.profile.variants["fast"][0]
        self.engine_image(1, 0.0)  # warm up the bitsandbytes kernels
        seconds, peak = self.timed(lambda: self.engine_image(steps, 0.0))
        weights = {
            name: weight_bytes(m) / 2**30
            for name, m in self.pipe.components.items()
            if hasattr(m, "parameters")
        }
        return {
            "layers_quantized": layers,
            "fast_image_s": seconds,
            "over_bf16_engine": seconds / min(self.samples["fast"]["engine"])
            if "fast" in self.samples
            else None,
            "peak_gib": peak,
            "weights_gib": {name: round(gib, 3) for name, gib in weights.items()},
            # Model offload holds one component at a time: about the largest one plus the activations.
            "model_offload_estimate_gib": (max(weights.values()) + peak - sum(weights.values()))
            if peak
            else None,
        }

"""`count=4` in one batch against four images one after another: Noisett's engine on the demo model,
64×64, 8 steps, in adjacent pairs so that a busy machine's drift cancels; figures are medians over the
pairs. This is what `NOISETT_BATCH=auto` decides by on a CPU (the GPU's figure comes from
benchmarks/gpu/first_light.py). `python -m benchmarks.run batch`

Batching encodes the prompt once instead of four times (four text encoders, Llama among them) and runs
the four latents through each denoising step together. Torch runs on one thread, as in bench_styles, and
both wall-clock and CPU time are shown.
"""

from __future__ import annotations

import os

import torch

from benchmarks.common import demo_settings, median, report, scaled, timed
from noisett_mcp.engine.config import EngineConfig
from noisett_mcp.engine.pipeline import Engine
from noisett_mcp.schemas import GenerationSpec

PAIRS = scaled(12, 1)
COUNT = 4
STEPS = scaled(8, 2)


def main() -> None:
    torch.set_num_threads(1)
    engine = Engine(EngineConfig.from_settings(demo_settings()))
    spec = GenerationSpec(
        prompt="a lighthouse at dusk",
        width=64,
        height=64,
        steps=STEPS,
        guidance=0.0,
        seeds=list(range(1, COUNT + 1)),
        model="demo",
        variant="fast",
    )
    indices = list(range(COUNT))

    def batched() -> None:
        engine.generate_batch(spec, indices, lambda step: None, lambda: False)

    def sequential() -> None:
        for index in indices:
            engine.generate(spec, index, lambda step: None, lambda: False)

    batched(), sequential()  # warm up both shapes
    pairs = [(timed(sequential), timed(batched)) for _ in range(PAIRS)]

    def ratio(kind: int) -> float:
        return median([seq[kind] / bat[kind] for seq, bat in pairs])

    def ms(runs: list[tuple[float, float]]) -> str:
        wall, cpu = median([r[0] for r in runs]), median([r[1] for r in runs])
        return f"{wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms CPU"

    gain = ratio(1)
    report(
        f"count={COUNT} batched against sequential (Noisett's engine, demo model, {STEPS} steps, 64×64)",
        [
            (f"{COUNT} images one after another", f"{ms([p[0] for p in pairs])} ({PAIRS} runs)"),
            (f"{COUNT} images in one batch", f"{ms([p[1] for p in pairs])} ({PAIRS} runs)"),
            ("sequential / batched (CPU, wall)", f"{gain:.2f}, {ratio(0):.2f}"),
            ("machine load (1-minute average)", f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"),
        ],
        f"{'GAIN' if gain > 1.1 else 'NO GAIN'} on this CPU (sequential / batched > 1.1, CPU time): "
        "NOISETT_BATCH=auto batches on CPU for this reason; on CUDA it waits for first-light figures.",
    )


if __name__ == "__main__":
    main()

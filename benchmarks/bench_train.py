"""Training steps per second on the demo model, on the CPU, for regressions: `styles train`'s own step
(flow-matching loss, backward, clipping, AdamW) with a rank-16 LoRA on the attention projections, at 32²
and 64², with gradient checkpointing (what `styles train` runs) and without it, side by side.
`python -m benchmarks.bench_train`

Torch runs on one thread; CPU time is the steadier figure on a shared machine. The steps alternate
(checkpointing on, then off) so that a busy machine's drift cancels in the ratio.
"""

from __future__ import annotations

import os

import torch
from diffusers import HiDreamImageTransformer2DModel

from benchmarks.common import demo_settings, median, report, timed
from noisett_mcp.engine.demo import write_demo_model
from noisett_mcp.engine.train import add_lora, flow_matching_loss, optimize, step_generator
from noisett_mcp.engine.train_data import encode_prompts

STEPS = 12
RANK = 16


def main() -> None:
    torch.set_num_threads(1)
    settings = demo_settings()
    folder = str(write_demo_model(settings.demo_model_dir))
    embeds = encode_prompts(settings, folder, ["a poster, in brand style"], "cpu", torch.float32, nf4=False)
    prompt = next(iter(embeds.values()))
    transformer = HiDreamImageTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    transformer.requires_grad_(False)
    torch.manual_seed(0)
    add_lora(transformer, RANK)
    transformer.train()
    optimizer = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad], lr=1e-4)
    rows = []
    for side in (32, 64):
        x0 = torch.randn((1, 4, side, side), generator=torch.Generator().manual_seed(side))
        runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for step in range(STEPS + 1):
            for checkpointing in (True, False):
                if checkpointing:
                    transformer.enable_gradient_checkpointing()
                else:
                    transformer.disable_gradient_checkpointing()
                generator = step_generator(0, step)

                def train_step(generator: torch.Generator = generator, x0: torch.Tensor = x0) -> None:
                    loss = flow_matching_loss(transformer, x0, prompt, generator, "cpu", torch.float32)
                    optimize(transformer, optimizer, loss)

                elapsed = timed(train_step)
                if step:  # the first is warm-up
                    runs[checkpointing].append(elapsed)
        on, off = runs[True], runs[False]
        rows.append((f"{side}², checkpointing on", _rate(on)))
        rows.append((f"{side}², checkpointing off", _rate(off)))
        ratio = median([a[1] / b[1] for a, b in zip(on, off, strict=True)])
        rows.append((f"{side}², on / off (CPU time per step)", f"{ratio:.2f}"))
    rows.append(("machine load (1-minute average)", f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"))
    report(
        f"styles train on the demo model (CPU, 1 thread, rank {RANK}, {STEPS} steps each; medians)",
        rows,
        "for regressions: the GPU figures at full size come from benchmarks/gpu/train_style.py",
    )


def _rate(runs: list[tuple[float, float]]) -> str:
    wall, cpu = median([r[0] for r in runs]), median([r[1] for r in runs])
    return f"{1 / wall:.2f} steps/s wall, {1 / cpu:.2f} steps/s CPU ({cpu * 1000:.0f} ms CPU per step)"


if __name__ == "__main__":
    main()

"""Style switching: generation time when requests alternate between two styles, against always the
same style (goal: a ratio of 1.05 or less), and both against reloading the pipeline for each style, as
a restart-per-LoRA deployment does. Noisett's engine on the demo model with the built-in demo styles,
4 steps, 64×64. `python benchmarks/bench_styles.py`

Measured in adjacent pairs, so that a busy machine's drift cancels: the styles run A A B B A A …, so
each run that switched adapters is followed by one that kept the same adapter, and each pair gives one
ratio; the figures are medians over the pairs. Torch runs on one thread here, and both wall-clock and
CPU time are shown: on a shared CPU, CPU time is the steadier measure of the work done (with several
threads, their spin-waiting on a busy machine would count as work).
"""

from __future__ import annotations

import os

import torch

from benchmarks.common import demo_settings, median, report, scaled, timed
from noisett_mcp.engine.config import EngineConfig
from noisett_mcp.engine.pipeline import Engine
from noisett_mcp.schemas import GenerationSpec
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.styles.manifest import Style

PAIRS = scaled(40, 2)
RELOADS = scaled(6, 1)
STEPS = scaled(4, 1)


def spec_for(style: Style) -> GenerationSpec:
    return GenerationSpec(
        prompt="a lighthouse at dusk",
        style=style.name,
        style_strength=style.manifest.strength,
        style_sha256=style.sha256,
        width=64,
        height=64,
        steps=STEPS,
        guidance=0.0,
        seeds=[1],
        model="demo",
        variant="fast",
    )


def main() -> None:
    torch.set_num_threads(1)
    settings = demo_settings()
    styles = StyleCatalog(settings).refresh().styles
    a, b = styles["demo-flat"], styles["demo-grain"]
    engine = Engine(EngineConfig.from_settings(settings))

    def generate(style: Style, on: Engine = engine) -> None:
        on.generate(spec_for(style), 0, lambda step: None, lambda: False, style)

    def reload_and_generate(style: Style) -> None:
        # a fresh pipeline, then the style's adapter loaded into it
        generate(style, Engine(EngineConfig.from_settings(settings)))

    for style in (a, b, a):  # load both adapters once, and warm up
        generate(style)

    switched, same = [], []
    for i in range(PAIRS):
        style = b if i % 2 == 0 else a  # the previous run used the other style
        switched.append(timed(lambda style=style: generate(style)))
        same.append(timed(lambda style=style: generate(style)))
    reloads, reload_same = [], []
    for i in range(RELOADS):
        style = (a, b)[i % 2]
        reloads.append(timed(lambda style=style: reload_and_generate(style)))
        reload_same.append(timed(lambda style=style: generate(style)))
    # The switch alone, without the run: set_adapters to the same adapter, or to the other one.
    switch_same = [timed(lambda: engine.styles.activate(a, 1.0))[0] for _ in range(scaled(50, 5))]
    switch_other = [timed(lambda s=s: engine.styles.activate(s, 1.0))[0] for s in (b, a) * 25]

    def ratio(top: list[tuple[float, float]], bottom: list[tuple[float, float]], kind: int) -> float:
        return median([t[kind] / u[kind] for t, u in zip(top, bottom, strict=True)])

    def ms(runs: list[tuple[float, float]]) -> str:
        wall, cpu = median([r[0] for r in runs]), median([r[1] for r in runs])
        return f"{wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms CPU"

    switched_ratio = ratio(switched, same, 1), ratio(switched, same, 0)
    report(
        f"style switching (Noisett's engine, demo model, {STEPS} steps, 64×64; medians)",
        [
            ("same style as the run before", f"{ms(same)} per image ({PAIRS} runs)"),
            ("switched from the other style", f"{ms(switched)} per image ({PAIRS} runs)"),
            ("reloading the pipeline per style", f"{ms(reloads)} per image ({RELOADS} runs)"),
            ("switched / same (CPU, wall)", f"{switched_ratio[0]:.3f}, {switched_ratio[1]:.3f}"),
            (
                "reload per style / same (CPU, wall)",
                f"{ratio(reloads, reload_same, 1):.2f}, {ratio(reloads, reload_same, 0):.2f}",
            ),
            (
                "reload per style / switched (CPU)",
                f"{median([r[1] for r in reloads]) / median([s[1] for s in switched]):.2f}",
            ),
            (
                "the switch alone: same / other adapter",
                f"{median(switch_same) * 1e3:.2f} ms / {median(switch_other) * 1e3:.2f} ms",
            ),
            ("machine load (1-minute average)", f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"),
        ],
        f"{'MET' if switched_ratio[0] <= 1.05 else 'MISSED'} (goal: switched / same ≤ 1.05, CPU time). "
        "The tiny demo pipeline reloads in a fraction of a second; HiDream-I1's 31 B parameters take "
        "minutes, so a reload per style costs far more there.",
    )


if __name__ == "__main__":
    main()

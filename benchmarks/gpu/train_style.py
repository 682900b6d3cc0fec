"""GPU: `styles train`'s training step on the full-size HiDream-I1 transformer with random weights (the
same compute as the real model; nothing is downloaded), at 1024², rank 32, batch 1: in bf16, and on an
NF4 base (QLoRA). It reports seconds per step, the minutes for 1,000 steps, the peak GPU memory of the
text-encoder stage and of training, and the smallest common GPU each fits. The goals (issue 26): 1,000
steps in under 30 minutes on one 80 GB GPU, and the NF4 base under 40 GiB peak.

    python benchmarks/gpu/train_style.py [--dry-run] [--out DIR] [--steps N] [--only bf16,nf4]

It runs the engine's own step (noisett_mcp.engine.train: flow_matching_loss, optimize, add_lora) with
gradient checkpointing, as `styles train` does. `--dry-run` runs the same code on the demo model's tiny
shapes on the CPU in fp32 (the NF4 section is GPU only and is skipped there, as `styles train` refuses
it on a CPU); tests/test_train_gpu_dry_run.py runs it. train_style.json is written to $OUT (or --out)
after every section. benchmarks/gpu/README.md says what to carry to a GPU machine.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "src")]  # the repo's src travels; no install needed

NEEDED = ("torch", "diffusers", "transformers", "peft", "accelerate", "pydantic", "pydantic_settings")
SECTIONS = ("bf16", "nf4")
RANK = 32
# (name, memory in GB as sold): the smallest that holds the peak with 5 % to spare.
GPUS = [("24 GB (L4, RTX 4090)", 24), ("40 GB (A100 40GB)", 40), ("48 GB (L40S, RTX 6000 Ada)", 48),
        ("80 GB (A100 80GB, H100)", 80), ("141 GB (H200)", 141)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, for CI")
    parser.add_argument("--out", type=Path, default=None, help="folder for train_style.json (default $OUT)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per section (GPU 10, dry 2)")
    parser.add_argument("--only", default="", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    only = {name for name in args.only.split(",") if name} or set(SECTIONS)
    if only - set(SECTIONS):
        parser.error(f"unknown sections {sorted(only - set(SECTIONS))}: choose from {', '.join(SECTIONS)}")
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"missing packages: {', '.join(missing)}; carry their wheels (benchmarks/gpu/README.md)")
        return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU")
        return 2
    out = args.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="train-style-"))
    out.mkdir(parents=True, exist_ok=True)
    bench = TrainBench(args.dry_run, out, args.steps or (2 if args.dry_run else 10))
    bench.run(only)
    print_table(bench.results)
    return 1 if bench.results["errors"] else 0


class TrainBench:
    def __init__(self, dry_run: bool, out: Path, steps: int) -> None:
        import torch

        self.torch = torch
        self.device = "cpu" if dry_run else "cuda"
        self.dtype = torch.float32 if dry_run else torch.bfloat16
        self.scale = "tiny" if dry_run else "full"
        self.side = 32 if dry_run else 1024
        self.steps = steps
        self.json_path = out / "train_style.json"
        self.results: dict[str, Any] = {
            "device": torch.cuda.get_device_name() if not dry_run else "cpu (dry run)",
            "scale": self.scale,
            "side": self.side,
            "rank": RANK,
            "dtype": str(self.dtype).removeprefix("torch."),
            "steps_timed": steps,
            "sections": {},
            "errors": {},
        }

    def run(self, only: set[str]) -> None:
        from full_size import build_pipeline

        started = time.perf_counter()
        pipe = build_pipeline(self.scale, self.device, self.dtype)  # type: ignore[arg-type]
        self.results["build_s"] = round(time.perf_counter() - started, 1)
        self.prompt, self.x0 = self._encode(pipe)
        transformer = pipe.transformer
        del pipe
        self._free()
        for section in SECTIONS:
            if section not in only:
                continue
            if section == "nf4" and self.device == "cpu":
                self.results["sections"]["nf4"] = {"skipped": "GPU only (bitsandbytes NF4 training)"}
                self._write()
                continue
            try:
                if section == "nf4":
                    transformer = self._nf4_transformer(transformer)
                self.results["sections"][section] = self._train(transformer)
            except Exception as exc:  # record it and go on: the other section's figures still count
                self.results["errors"][section] = f"{type(exc).__name__}: {exc}"[:500]
            self._write()

    def _encode(self, pipe: Any) -> tuple[Any, Any]:
        """The text stage as `styles train` runs it (its peak memory), then one latent at the side."""
        from noisett_mcp.engine.train_data import PromptEmbeds

        torch = self.torch
        self._reset_peak()
        with torch.no_grad():
            t5, _, llama, _, pooled, _ = pipe.encode_prompt(
                prompt="a poster, in brand style", device=torch.device(self.device), dtype=self.dtype,
                do_classifier_free_guidance=False,
            )  # fmt: skip
            self.results["text_stage_peak_gib"] = self._peak()
            pixels = torch.rand((1, 3, self.side, self.side), device=self.device, dtype=self.dtype) * 2 - 1
            vae = pipe.vae
            latent = vae.encode(pixels).latent_dist.mode()
            x0 = ((latent - vae.config.shift_factor) * vae.config.scaling_factor).float().cpu()
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder_4", "vae"):
            setattr(pipe, name, None)  # freed before training, as styles train does
        return PromptEmbeds(t5, llama, pooled), x0

    def _nf4_transformer(self, transformer: Any) -> Any:
        from full_size import fresh_component, quantize

        del transformer
        self._free()
        fresh = fresh_component(self.scale, "transformer", self.device, self.dtype)  # type: ignore[arg-type]
        quantize(fresh, "nf4", self.dtype)
        return fresh

    def _train(self, transformer: Any) -> dict[str, Any]:
        from noisett_mcp.engine.train import add_lora, flow_matching_loss, optimize, step_generator

        torch = self.torch
        transformer.requires_grad_(False)
        transformer.enable_gradient_checkpointing()
        transformer.train()
        torch.manual_seed(0)
        add_lora(transformer, RANK)
        params = [p for p in transformer.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        embeds = self.prompt.to(self.device, self.dtype)
        self._reset_peak()
        times, losses = [], []
        for step in range(self.steps + 2):  # two warm-up steps
            self._sync()
            started = time.perf_counter()
            loss = flow_matching_loss(
                transformer, self.x0, embeds, step_generator(0, step), self.device, self.dtype
            )
            losses.append(optimize(transformer, optimizer, loss))
            self._sync()
            if step >= 2:
                times.append(time.perf_counter() - started)
        seconds = sorted(times)[len(times) // 2]
        peak = self._peak()
        return {
            "s_per_step_median": round(seconds, 3),
            "s_per_step_min": round(min(times), 3),
            "minutes_per_1000_steps": round(seconds * 1000 / 60, 1),
            "peak_gib": peak,
            "smallest_gpu": _smallest_gpu(peak),
            "lora_params_m": round(sum(p.numel() for p in params) / 1e6, 2),
            "losses_finite": all(loss == loss and abs(loss) < 1e6 for loss in losses),
        }

    def _reset_peak(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def _peak(self) -> float | None:
        if self.device != "cuda":
            return None
        return round(self.torch.cuda.max_memory_allocated() / 2**30, 1)

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def _free(self) -> None:
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    def _write(self) -> None:
        self.json_path.write_text(json.dumps(self.results, indent=2))


def _smallest_gpu(peak_gib: float | None) -> str | None:
    if peak_gib is None:
        return None
    needed_gb = peak_gib * 2**30 / 1e9
    return next((name for name, gb in GPUS if needed_gb <= gb * 0.95), "none listed: more than 141 GB")


def print_table(results: dict[str, Any]) -> None:
    shape = f"{results['side']}², rank {results['rank']}, batch 1, {results['steps_timed']} timed steps"
    print(f"\nstyles train step, {results['scale']} HiDream-I1 on {results['device']}: {shape}")
    print(f"  text-encoder stage peak: {_gib(results.get('text_stage_peak_gib'))}")
    for name, section in results["sections"].items():
        if "skipped" in section:
            print(f"  {name}: skipped ({section['skipped']})")
            continue
        print(
            f"  {name}: {section['s_per_step_median']} s/step, {section['minutes_per_1000_steps']} min per "
            f"1,000 steps, peak {_gib(section['peak_gib'])}, fits {section['smallest_gpu'] or 'n/a (CPU)'}"
        )
    for name, error in results["errors"].items():
        print(f"  {name}: FAILED {error}")


def _gib(value: float | None) -> str:
    return "n/a (CPU)" if value is None else f"{value} GiB"


if __name__ == "__main__":
    sys.exit(main())

"""Cold start: a `blob://` model from process start to ready, today's path against the streaming one.

The model is a random-weight HiDream pipeline: the demo's text encoders, VAE and tokenizers, and a
transformer of HiDream-I1's real width (20 heads of 128, 4096-wide captions, 4 routed experts) with one
double and one single block instead of 16 and 32: about 3 GiB of float32 safetensors in 1 GiB shards
(`--quick`: a narrow one of a few MiB, for CI). It is uploaded to Azurite (on disk), then each path runs
in a fresh process, one after the other:
- today: sync the prefix to a local folder (storage/sync.py), `from_pretrained`, `.to(device)`;
- streaming: `Engine(EngineConfig.from_settings(settings))` with `NOISETT_MODEL=blob://…`
  (engine/streaming.py), no local copy;
and, from the same files on local disk, the loaders the field offers: `from_pretrained` with
`device_map`, our streaming loader on the folder, and the Run:ai streamer's read of the shards (where
`runai-model-streamer` is installed). Each child reports seconds since its process started and its peak
RSS, once every weight has been read (`_touch`). Goal (issue 23): streaming at most 0.5× today's time,
peak RSS no more than the largest shard plus a bounded buffer above the model itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from benchmarks.common import free_port, report

logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every request's headers at INFO

GIB = 1024**3
ROOT = Path(tempfile.gettempdir()) / "noisett-bench-cold-start"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "models"


def connection_string(port: int) -> str:
    account = "devstoreaccount1"
    return (
        f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{account};"
    )


def write_model(folder: Path, quick: bool) -> Path:
    """The random-weight pipeline, written once per size (kept between runs)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import HiDreamImageTransformer2DModel

    from benchmarks.gpu.full_size import _materialize
    from noisett_mcp.engine.demo import build_demo_pipeline

    if (folder / "model_index.json").is_file():
        return folder
    pipe = build_demo_pipeline()
    heads, caption = (2, 64) if quick else (20, 4096)
    with init_empty_weights():
        transformer = HiDreamImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=128 if not quick else 16,
            num_attention_heads=heads,
            caption_channels=[caption, caption],
            text_emb_dim=2048 if not quick else 32,
            num_routed_experts=4,
            num_activated_experts=2,
            axes_dims_rope=(64, 32, 32) if not quick else (8, 4, 4),
            max_resolution=(128, 128),
            llama_layers=[0, 0],
        )
    _materialize(transformer, "cpu", torch.float32, torch.Generator().manual_seed(0))
    pipe.transformer = transformer
    pipe.register_modules(transformer=transformer)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True, max_shard_size="1GB")
    tmp.rename(folder)
    return folder


async def upload(folder: Path, conn: str, prefix: str) -> None:
    from azure.storage.blob.aio import BlobServiceClient

    async with BlobServiceClient.from_connection_string(conn) as service:
        container = service.get_container_client(CONTAINER)
        if not await container.exists():
            await container.create_container()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            with path.open("rb") as data:
                name = f"{prefix}/{path.relative_to(folder).as_posix()}"
                await container.upload_blob(name, data, overwrite=True, max_concurrency=8)


# --- the children: each loads once and prints one JSON line ---
def child(path: str, conn: str, model: str, work: Path) -> dict[str, object]:
    import diffusers  # noqa: F401  (the imports, timed apart from the load)

    from noisett_mcp.config import Settings
    from noisett_mcp.engine import pipeline  # noqa: F401
    from noisett_mcp.weights.stages import process_age

    imported = process_age()
    settings = Settings(
        model=model,
        variant="fast",
        data_dir=work / "data",
        azure_storage_connection_string=conn or None,
        storage_deadline_seconds=60,
        preload=False,
    )
    if path == "today":
        _today(settings, work)
    elif path == "streaming":
        from noisett_mcp.engine.config import EngineConfig
        from noisett_mcp.engine.pipeline import Engine

        _touch(Engine(EngineConfig.from_settings(settings)).pipe.components.values())
    elif path == "device_map":
        import torch
        from diffusers import HiDreamImagePipeline

        pipe = HiDreamImagePipeline.from_pretrained(model, dtype=torch.float32, device_map="cpu")
        _touch(pipe.components.values())
    elif path == "runai":
        from runai_model_streamer import SafetensorsStreamer

        shards = [str(p) for p in sorted(Path(model).rglob("*.safetensors"))]
        with SafetensorsStreamer() as streamer:
            streamer.stream_files(shards)
            kept = dict(streamer.get_tensors())  # held, as a model would hold them
        _touch(kept.values())
    seconds = process_age()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": seconds, "load_seconds": seconds - imported, "peak_rss_gib": rss}


def _today(settings: object, work: Path) -> None:
    """The path before issue 23: sync the prefix to a folder, from_pretrained, .to(device)."""
    import anyio
    import torch
    from diffusers import HiDreamImagePipeline

    from noisett_mcp.storage.azure_account import BlobAccount
    from noisett_mcp.storage.sync import sync_model

    async def sync() -> Path:
        account = BlobAccount.from_settings(settings)  # type: ignore[arg-type]
        try:
            return await sync_model(account, settings.model_copy(update={"model_cache_dir": work / "cache"}))  # type: ignore[attr-defined]
        finally:
            await account.aclose()

    folder = anyio.run(sync)
    pipe = HiDreamImagePipeline.from_pretrained(folder, dtype=torch.float32, local_files_only=True).to("cpu")
    _touch(pipe.components.values())


def _touch(parts: Iterable[object]) -> None:
    """Read every weight once: on a CPU, `.to("cpu")` leaves a memory-mapped file unread, where on a GPU
    the copy reads it all. Ready means every byte in memory, as the first image needs them."""
    import torch

    total = 0.0
    for part in parts:
        if isinstance(part, torch.nn.Module):
            tensors = list(part.parameters())
        else:
            tensors = [part] if isinstance(part, torch.Tensor) else []
        total += sum(float(t.sum()) for t in tensors if t.is_floating_point())
    assert math.isfinite(total), "a weight read as garbage"


def run_child(path: str, conn: str, model: str) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix=f"noisett-cold-{path}-"))
    try:
        args = [sys.executable, "-m", "benchmarks.bench_cold_start", "--child", path, "--model", model]
        out = subprocess.run(
            args,
            env={**os.environ, "BENCH_CONN": conn, "BENCH_WORK": str(work)},
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def start_azurite(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    executable = Path(".ci/node/node_modules/.bin/azurite-blob")
    port = free_port()
    proc = subprocess.Popen(
        [str(executable), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(workdir),
         "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(3)
    return proc, port


def main(quick: bool) -> None:
    folder = write_model(ROOT / ("quick" if quick else "full"), quick)
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    largest = max(p.stat().st_size for p in folder.rglob("*.safetensors"))
    workdir = Path(tempfile.mkdtemp(prefix="noisett-cold-azurite-"))
    proc, port = start_azurite(workdir)
    try:
        conn = connection_string(port)
        asyncio.run(upload(folder, conn, "pipeline"))
        blob = f"blob://{CONTAINER}/pipeline"
        results = {path: run_child(path, conn, blob) for path in ("today", "streaming")}
        for path in ("device_map", "local streaming", "runai"):
            if path == "runai" and not _has_runai():
                continue
            results[path] = run_child("streaming" if path == "local streaming" else path, "", str(folder))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    today, streaming = results["today"]["seconds"], results["streaming"]["seconds"]
    ratio = float(streaming) / float(today)  # type: ignore[arg-type]
    loads = {path: float(result["load_seconds"]) for path, result in results.items()}  # type: ignore[arg-type]
    rows = [("model", f"{size / GIB:.2f} GiB of safetensors, largest shard {largest / GIB:.2f} GiB")]
    for path, result in results.items():
        seconds, rss = float(result["seconds"]), float(result["peak_rss_gib"])  # type: ignore[arg-type]
        rows.append(
            (path, f"{seconds:.2f} s to ready ({loads[path]:.2f} s after the imports, "
             f"{size / GIB / loads[path]:.2f} GiB/s), peak RSS {rss:.2f} GiB")
        )  # fmt: skip
    load_ratio = loads["streaming"] / loads["today"]
    rows.append(
        ("ratio streaming / today (from Blob)", f"{ratio:.2f}x ({load_ratio:.2f}x after the imports)")
    )
    rss_ok = float(results["streaming"]["peak_rss_gib"]) <= (size + largest) / GIB + 1.0  # type: ignore[arg-type]
    report(
        "cold start from Blob (Azurite), process start to ready",
        rows,
        f"{'MET' if ratio <= 0.5 and rss_ok else 'MISSED'} (goal: ≤ 0.5x today's time; peak RSS ≤ model + "
        "largest shard + 1 GiB)",
    )


def _has_runai() -> bool:
    import importlib.util

    return importlib.util.find_spec("runai_model_streamer") is not None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a model of a few MiB (CI)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        work = Path(os.environ["BENCH_WORK"])
        print(json.dumps(child(options.child, os.environ["BENCH_CONN"], options.model, work)))
    else:
        main(options.quick)

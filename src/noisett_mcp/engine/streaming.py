"""Stream a pipeline's safetensors straight onto the target device: each component is built on the meta
device (no memory), and each tensor is placed where it will live as its bytes arrive, with parallel
reads. There is no full copy of the model in CPU memory on the way.

- From a local folder (or the Blob cache) a shard is memory-mapped by safetensors and each tensor is
  read straight onto the device (`safe_open(device=...)`), by several threads at once.
- From Blob a shard's data is fetched by READERS parallel ranged reads into one buffer, and its tensors
  are views of that buffer until they are placed: host memory holds one shard at a time (HiDream's
  are at most 5 GiB), not the model.

Why this and not the candidates, measured on this project's 2-core CPU machine with a 2.96 GiB
random-weight pipeline of HiDream's real width (`python -m benchmarks.bench_cold_start`, 2026-12-04;
seconds after the imports until every weight is in memory):
- from local disk, diffusers' `from_pretrained(device_map="cpu")` 2.65 s (1.12 GiB/s), this loader
  2.83 s (1.04 GiB/s), the Run:ai streamer 20.4 s (0.14 GiB/s, its defaults on 2 cores);
- from Blob (Azurite), today's sync-then-`from_pretrained` 37.8 s, this loader 35.9 s (0.95×): both
  wait on Azurite (about 80 MB/s here), so the gain of skipping the disk copy does not show on a CPU;
  peak RSS 3.77 GiB, within the model plus its largest shard (0.93 GiB).
- diffusers/transformers `device_map=` loads straight to the device too, but only from a local
  folder: a Blob model would first need a full local copy (today's sync), which is the step to remove.
- The Run:ai Model Streamer (`runai-model-streamer`) reads files with a native thread pool and yields
  CPU tensors that still need placing; its Azure backend is a second, 13 MB native client with its own
  credential handling (environment variables), and its PyPI wheel lagged the core (0.17.0 against the
  0.17.1 that the core's `azure` extra pins). The benchmark times it on local files beside ours; from
  Blob we keep the SDK and the credential the rest of storage uses, with the same shape of loop
  (parallel ranged reads into a bounded buffer).
- `fastsafetensors` needs GPUDirect Storage (cuFile) for its gain; without a GPU it cannot be measured.

Quantized components (NF4, int8) are quantized by `from_pretrained` as it loads, so with
NOISETT_QUANTIZE the engine keeps that path (a Blob model synced to MODEL_CACHE_DIR first). Offload
streams to CPU memory, which offload needs, and then hands the pipeline to accelerate's hooks.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import accelerate
import diffusers
import torch
import transformers
from accelerate.utils import set_module_tensor_to_device
from diffusers import HiDreamImagePipeline
from safetensors import safe_open

from noisett_mcp.errors import ModelLoadFailed, ModelUnavailable
from noisett_mcp.weights.files import WEIGHTS_SUFFIX, ModelFiles
from noisett_mcp.weights.stages import LoadStages

log = logging.getLogger(__name__)

PLACERS = 4  # threads placing one shard's tensors (the reads of a mapped file run in parallel)
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def stream_pipeline(
    files: ModelFiles,
    device: str,
    dtype: torch.dtype,
    stages: LoadStages,
    given: dict[str, Any] | None = None,
) -> HiDreamImagePipeline:
    """The pipeline in `files`, every model component's weights on `device` in `dtype`. `given`
    components (Llama, loaded elsewhere) are passed through. Raise ModelLoadFailed naming the file and
    what is wrong; nothing is returned half-loaded."""
    given = dict(given or {})
    files.check_pipeline()
    stages.expect(sum(f.size for f in files.files.values()))
    stages.begin("first byte")
    files.fetch_small(stages.add)
    index = json.loads((files.folder / "model_index.json").read_text())
    for name, spec in index.items():
        if name.startswith("_") or name in given or not isinstance(spec, list) or None in spec:
            continue
        shards = component_shards(files, name)
        if shards:
            stages.begin(f"component {name}")
            try:
                given[name] = load_component(files, name, spec, shards, device, dtype, stages)
            except torch.OutOfMemoryError as exc:
                raise ModelUnavailable(_out_of_memory(name, files, device)) from exc
    return HiDreamImagePipeline.from_pretrained(files.folder, **given, dtype=dtype, local_files_only=True)


def _out_of_memory(name: str, files: ModelFiles, device: str) -> str:
    """How much memory the model needs, and which setting lowers it (the H200 first-light figures)."""
    total = sum(f.size for f in files.files.values() if f.relative.endswith(WEIGHTS_SUFFIX)) / 2**30
    free = ""
    if device.startswith("cuda"):
        available, capacity = torch.cuda.mem_get_info(torch.device(device))
        free = f" ({available / 2**30:.1f} of {capacity / 2**30:.1f} GiB free)"
    return (
        f"not enough GPU memory on {device}{free} to load {name}: {files.location} holds {total:.1f} GiB of "
        "weights, and HiDream-I1 in bf16 peaks at about 61 GiB at 1024². NOISETT_QUANTIZE=nf4 needs about "
        "28 GiB; with NOISETT_OFFLOAD=model as well, about 12 GiB; NOISETT_OFFLOAD=sequential, less still"
    )


def component_shards(files: ModelFiles, name: str) -> list[str]:
    """The safetensors shards of component `name`; [] for one without weights (tokenizer, scheduler).
    A shard named by the component's index but absent, or a model config without weights, is an error."""
    here = [rel for rel in files.files if rel.startswith(f"{name}/") and rel.count("/") == 1]
    indexes = [rel for rel in here if rel.endswith(f"{WEIGHTS_SUFFIX}.index.json")]
    if indexes:
        weight_map = json.loads((files.folder / indexes[0]).read_text())["weight_map"]
        shards = sorted({f"{name}/{shard}" for shard in weight_map.values()})
        missing = [rel for rel in shards if rel not in files.files]
        if missing:
            raise ModelLoadFailed(
                f"{files.where(missing[0])} is missing: {files.where(indexes[0])} names it "
                f"({len(missing)} of {len(shards)} shards absent). Upload the whole component again"
            )
        return shards
    shards = sorted(rel for rel in here if rel.endswith(WEIGHTS_SUFFIX))
    if not shards and f"{name}/config.json" in files.files:
        found = ", ".join(sorted(rel.split("/")[1] for rel in here))
        raise ModelLoadFailed(
            f"{files.where(name)} has a model config but no safetensors weights (found: {found}). "
            "Write the pipeline with save_pretrained (safe_serialization) or `noisett-mcp model prepare`"
        )
    return shards


def load_component(
    files: ModelFiles,
    name: str,
    spec: list[str],
    shards: list[str],
    device: str,
    dtype: torch.dtype,
    stages: LoadStages,
) -> torch.nn.Module:
    """Build component `name` (class `spec`) on the meta device, then place every tensor of its shards."""
    library, class_name = spec
    cls = getattr(importlib.import_module(library), class_name)
    folder = files.folder / name
    with accelerate.init_empty_weights():
        if issubclass(cls, diffusers.ModelMixin):
            model = cls.from_config(cls.load_config(folder))
        else:
            model = cls._from_config(transformers.AutoConfig.from_pretrained(folder), dtype=dtype)
    for shard in shards:
        header = files.shard_header(shard)  # truncated or damaged: refused before any tensor lands
        local = files.local_path(shard)
        if local is not None:
            _place_mapped(model, str(local), device, dtype)
            stages.add(files.files[shard].size)
        else:
            _place_streamed(model, files, shard, header.data_start, header.tensors, device, dtype, stages)
    if isinstance(model, transformers.PreTrainedModel):
        model.tie_weights()  # T5's shared embedding is saved once
    missing = [key for key, value in _tensors(model) if value.is_meta]
    if missing:
        raise ModelLoadFailed(
            f"{files.where(name)}: {len(missing)} tensors are in no shard (first: {', '.join(missing[:3])}); "
            "a shard is missing or belongs to another model. Upload the component again"
        )
    return model.eval()


def _tensors(model: torch.nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def _place(model: torch.nn.Module, key: str, value: torch.Tensor, device: str, dtype: torch.dtype) -> None:
    target = dtype if value.is_floating_point() else None
    try:
        set_module_tensor_to_device(model, key, device, value=value, dtype=target)
    except (ValueError, AttributeError):
        log.debug("ignoring tensor %s: the model has no such parameter", key)  # as from_pretrained does


def _place_mapped(model: torch.nn.Module, path: str, device: str, dtype: torch.dtype) -> None:
    """A local shard, memory-mapped: each tensor is read straight onto the device, PLACERS at a time."""
    with safe_open(path, framework="pt", device=device) as shard:
        keys = list(shard.keys())

        def place(part: list[str]) -> None:
            for key in part:
                _place(model, key, shard.get_tensor(key), device, dtype)

        with ThreadPoolExecutor(PLACERS, thread_name_prefix="noisett-place") as pool:
            list(pool.map(place, [keys[i::PLACERS] for i in range(PLACERS)]))


def _place_streamed(
    model: torch.nn.Module,
    files: ModelFiles,
    shard: str,
    data_start: int,
    tensors: dict[str, dict[str, Any]],
    device: str,
    dtype: torch.dtype,
    stages: LoadStages,
) -> None:
    """A remote shard: the whole file by parallel ranged reads into one buffer (kept as it is in the
    cache, where one is set), then each tensor from it."""
    buffer = bytearray(files.files[shard].size)
    files.read_into(shard, 0, memoryview(buffer), stages.add)
    raw = torch.frombuffer(buffer, dtype=torch.uint8)
    for key, info in tensors.items():
        begin, end = (data_start + offset for offset in info["data_offsets"])
        try:
            kind = DTYPES[info["dtype"]]
        except KeyError as exc:
            raise ModelLoadFailed(f"{files.where(shard)}: tensor {key} has unknown dtype {exc}") from exc
        piece = raw[begin:end]
        if begin % kind.itemsize:
            piece = piece.clone()  # a view needs its dtype's alignment
        _place(model, key, piece.view(kind).reshape(info["shape"]), device, dtype)
    files.keep(shard, memoryview(buffer))

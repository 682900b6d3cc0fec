"""`noisett-mcp model prepare SRC DEST [--quantize nf4]`: write a pipeline to Blob storage
(`blob://CONTAINER/PREFIX`) or a folder in the layout the streaming loader reads, with a manifest.

SRC is a local pipeline folder (a `save_pretrained` folder, or `demo`). The files go up in the order a
reader can trust: configs and tokenizers, then the weights, then `model_index.json` (a prefix without it
is not a pipeline yet), then the manifest (`noisett-model.json`: source, variant, quantization, library
versions), which `serve` checks against its settings. With `--quantize nf4` the transformer and Llama are
quantized once here (bitsandbytes, which needs a CUDA GPU) and written already quantized.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import anyio

from noisett_mcp import __version__
from noisett_mcp.config import BLOB_MODEL_SCHEME, Settings
from noisett_mcp.weights.manifest import MANIFEST, manifest

LAST = ("model_index.json", MANIFEST)


def register(commands: argparse._SubParsersAction) -> None:
    model = commands.add_parser("model", help="prepare model weights", description="Model weights.")
    prepare = model.add_subparsers(title="commands", metavar="COMMAND").add_parser(
        "prepare",
        help="write a pipeline to Blob storage in the layout the server streams",
        description="Write the pipeline in SRC (a folder, or `demo`) to DEST (`blob://CONTAINER/PREFIX` or "
        "a folder), with a manifest that `serve` checks against its settings.",
    )
    prepare.add_argument("src", help="a local pipeline folder (save_pretrained), or `demo`")
    prepare.add_argument("dest", help="blob://CONTAINER/PREFIX, or a local folder")
    prepare.add_argument("--quantize", choices=["none", "nf4"], default="none")
    prepare.add_argument("--variant", choices=["auto", "full", "dev", "fast"], default="auto")
    prepare.add_argument(
        "--llama",
        type=Path,
        help="a Llama-3.1 folder (the HiDream repos ship without it) to write in as text_encoder_4 and "
        "tokenizer_4, so that it streams with the rest instead of loading apart",
    )
    prepare.set_defaults(run=prepare_model)


def prepare_model(args: argparse.Namespace, settings: Settings) -> int:
    source = _source_folder(args.src, settings)
    if source is None:
        print(
            f"error: {args.src} is not a pipeline folder (no model_index.json) and not `demo`",
            file=sys.stderr,
        )
        return 2
    variant = Settings(model=args.src, variant=args.variant).resolved_variant
    with tempfile.TemporaryDirectory(prefix="noisett-prepare-") as scratch:
        if args.quantize != "none":
            source = _quantized(source, Path(scratch), settings)
        versions = _versions()
        body = manifest(args.src, variant, args.quantize, versions)
        (Path(scratch) / MANIFEST).write_text(json.dumps(body, indent=1))
        files = {p.relative_to(source).as_posix(): p for p in sorted(source.rglob("*")) if p.is_file()}
        files[MANIFEST] = Path(scratch) / MANIFEST
        if args.llama is not None:
            files.update(_with_llama(args.llama, source, Path(scratch)))
        if args.dest.startswith(BLOB_MODEL_SCHEME):
            anyio.run(_upload, files, args.dest, settings)
        else:
            _copy(files, Path(args.dest))
    print(f"prepared {args.dest}: {len(files)} files, variant {variant}, quantization {args.quantize}")
    return 0


def _source_folder(src: str, settings: Settings) -> Path | None:
    if src == "demo":
        from noisett_mcp.engine.demo import write_demo_model

        return write_demo_model(settings.demo_model_dir)
    folder = Path(src).expanduser()
    return folder if (folder / "model_index.json").is_file() else None


def _with_llama(llama: Path, source: Path, scratch: Path) -> dict[str, Path]:
    """Llama's files as the pipeline's text_encoder_4 and tokenizer_4, and a model_index.json naming them."""
    files = {}
    for path in sorted(p for p in llama.iterdir() if p.is_file()):
        if path.name.startswith("tokenizer") or path.name == "special_tokens_map.json":
            files[f"tokenizer_4/{path.name}"] = path
        elif path.suffix in (".safetensors", ".json"):
            files[f"text_encoder_4/{path.name}"] = path
    index = json.loads((source / "model_index.json").read_text())
    index["text_encoder_4"] = ["transformers", "LlamaForCausalLM"]
    index["tokenizer_4"] = ["transformers", "PreTrainedTokenizerFast"]
    (scratch / "model_index.json").write_text(json.dumps(index, indent=2))
    return {**files, "model_index.json": scratch / "model_index.json"}


def _ordered(files: dict[str, Path]) -> list[list[str]]:
    """Waves of files: the frame, then the weights, then model_index.json, then the manifest."""
    small = [rel for rel in files if rel not in LAST and not rel.endswith(".safetensors")]
    weights = [rel for rel in files if rel.endswith(".safetensors")]
    return [small, weights, [LAST[0]], [LAST[1]]]


async def _upload(files: dict[str, Path], dest: str, settings: Settings) -> None:
    from noisett_mcp.storage.azure_account import BlobAccount
    from noisett_mcp.storage.sync import parse_blob_model

    container_name, prefix = parse_blob_model(dest)
    account = BlobAccount.from_settings(settings)
    try:
        await account.ensure_container(container_name)
        container = account.container(container_name)
        for wave in _ordered(files):
            for relative in wave:
                with files[relative].open("rb") as data:
                    await container.upload_blob(prefix + relative, data, overwrite=True, max_concurrency=8)
    finally:
        await account.aclose()


def _copy(files: dict[str, Path], dest: Path) -> None:
    for wave in _ordered(files):
        for relative in wave:
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[relative], dest / relative)


def _quantized(source: Path, scratch: Path, settings: Settings) -> Path:
    """The pipeline with its transformer and Llama in NF4, saved (bitsandbytes serializes 4-bit weights)."""
    from noisett_mcp.engine.config import EngineConfig
    from noisett_mcp.engine.pipeline import Engine

    quantizing = settings.model_copy(update={"model": str(source), "quantize": "nf4", "offload": "none"})
    engine = Engine(EngineConfig.from_settings(quantizing))
    target = scratch / "nf4"
    engine.pipe.save_pretrained(target)
    for extra in ("noisett.json",):
        if (source / extra).is_file():
            shutil.copyfile(source / extra, target / extra)
    return target


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "noisett_mcp": __version__,
        **{name: version(name) for name in ("torch", "diffusers", "transformers")},
    }

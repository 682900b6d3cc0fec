"""`noisett-mcp styles train IMAGES_DIR --name NAME`: a brand style learnt from a folder of pictures, put
where the server offers it. Everything that can be checked without torch is checked first; the engine
(engine/train.py) trains, samples, checkpoints and checks the result.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import anyio

from noisett_mcp.config import Settings
from noisett_mcp.errors import NoisettError
from noisett_mcp.styles.manifest import StyleManifest, TrainingRecord
from noisett_mcp.styles.training import (
    MIN_IMAGES,
    TrainingConfig,
    TrainingFailed,
    TrainingImage,
    TrainingRefused,
    check_base_model,
    check_name,
    default_trigger,
    name_taken,
    training_images,
)

STOPPED = 130  # the shell's exit status for Ctrl-C


def _bounded(kind: Callable[[str], float], low: float, high: float, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; allowed: {what}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: {what}")
        return value

    return parse


def add_train_command(styles: argparse._SubParsersAction) -> None:
    train = styles.add_parser(
        "train",
        help="train a brand style (a LoRA) from a folder of pictures",
        description=f"Train a brand style on HiDream-I1 from IMAGES_DIR: at least {MIN_IMAGES} PNG, JPEG or "
        "WebP pictures of one look (10 to 40 is best), each with an optional caption NAME.txt beside it. "
        "The style lands in the styles folder (or Blob storage with --upload), where list_styles offers "
        "it at once.",
    )
    train.add_argument("images_dir", type=Path, help="the folder of training pictures")
    train.add_argument("--name", required=True, help="the style's name: lowercase letters, digits, hyphens")
    train.add_argument("--title", help="a short human name (default: from --name)")
    train.add_argument("--description", help="what it looks like and when to use it, for the assistant")
    train.add_argument("--trigger", help="words that call up the style (default: 'in NAME style')")
    train.add_argument(
        "--steps", type=_bounded(int, 1, 100_000, "1 to 100000"), default=1000, help="default: 1000"
    )
    train.add_argument(
        "--rank", type=_bounded(int, 1, 256, "1 to 256"), default=16, help="LoRA rank; default: 16"
    )
    train.add_argument(
        "--learning-rate", type=_bounded(float, 1e-7, 1.0, "above 0, up to 1"), default=1e-4,
        help="AdamW's rate; default: 1e-4",
    )  # fmt: skip
    train.add_argument("--resolution", type=int, help="pixels a side (default: the model's, 1024)")
    train.add_argument(
        "--seed", type=_bounded(int, 0, 2**32 - 1, "0 to 2**32-1"), default=0, help="default: 0"
    )
    train.add_argument("--variant", choices=["full", "dev", "fast"], help="default: NOISETT_VARIANT")
    train.add_argument(
        "--quantize", choices=["none", "nf4"], default="none", help="nf4: a 4-bit base (QLoRA), GPU only"
    )
    train.add_argument(
        "--sample-every", type=_bounded(int, 0, 100_000, "0 (no samples) or more"), default=250,
        help="render the sample prompts every N steps (and before and after training); 0: never",
    )  # fmt: skip
    train.add_argument(
        "--checkpoint-every", type=_bounded(int, 0, 100_000, "0 (at the end only) or more"), default=250,
        help="save the adapter and optimiser state every N steps; default: 250",
    )  # fmt: skip
    train.add_argument("--resume", action="store_true", help="continue the checkpoint of an unfinished run")
    train.add_argument("--upload", action="store_true", help="put the style in Blob's styles container")
    train.add_argument("--model", help="the base model (default: NOISETT_MODEL; `demo` for the tiny one)")
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    try:
        config, manifest = _plan(args, settings)
    except (TrainingRefused, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from noisett_mcp.engine.train import TrainingStopped, train_style  # torch loads here

    bars: list[tqdm] = []  # made when training starts, after the one-time encoding

    def started(start: int, total: int) -> None:
        bars.append(tqdm(total=total, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True))

    def stepped(step: int, loss: float) -> None:
        bars[0].set_postfix(loss=f"{loss:.4f}", refresh=False)
        bars[0].update(step - bars[0].n)

    def note(text: str) -> None:
        (bars[0].write if bars else print)(text, file=sys.stderr)

    try:
        with logging_redirect_tqdm():
            result = train_style(settings, config, manifest, started, stepped, note)
    except TrainingStopped as stop:
        print(f"stopped at step {stop.step}: continue with the same command and --resume", file=sys.stderr)
        return STOPPED
    except TrainingRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (TrainingFailed, NoisettError) as exc:  # NoisettError: the model cannot load here
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for bar in bars:
            bar.close()
    where = _publish(settings, args.upload, result.staged, config.name)
    shutil.rmtree(config.work_dir / "checkpoint", ignore_errors=True)  # the style is in place now
    _report(config, result, where)
    return 0


def _plan(args: argparse.Namespace, settings: Settings) -> tuple[TrainingConfig, StyleManifest]:
    """The checked run and its manifest, or TrainingRefused: nothing here imports torch."""
    name = args.name
    check_name(name)
    check_base_model(settings)
    _check_free(settings, name, args.upload)
    trigger = " ".join((args.trigger or default_trigger(name)).split())
    if not trigger:
        raise TrainingRefused("--trigger is empty: give the words that call up the style")
    images = training_images(args.images_dir, trigger)
    config = TrainingConfig(
        name=name,
        images=images,
        trigger=trigger,
        variant=args.variant or settings.resolved_variant,
        steps=args.steps,
        rank=args.rank,
        learning_rate=args.learning_rate,
        resolution=args.resolution,
        seed=args.seed,
        quantize=args.quantize,
        sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every,
        work_dir=settings.data_dir / "training" / name,
        resume=args.resume,
    )
    return config, _manifest(args, settings, config, images)


def _check_free(settings: Settings, name: str, upload: bool) -> None:
    from noisett_mcp.styles.catalog import StyleCatalog

    logging.getLogger("noisett_mcp.styles").setLevel(logging.WARNING)  # only the name matters here
    offered = list(StyleCatalog(settings).refresh().styles)
    name_taken(name, settings.resolved_styles_dir, offered)
    if upload:
        if not settings.blob_enabled:
            raise TrainingRefused(
                "--upload needs Blob storage: set AZURE_STORAGE_CONNECTION_STRING or NOISETT_BLOB_ACCOUNT_URL"
            )
        from noisett_mcp.storage.style_upload import style_in_blob

        if anyio.run(style_in_blob, settings, name):
            raise TrainingRefused(
                f"--name {name!r} is taken: the Blob container {settings.blob_styles_container!r} already "
                "holds a style of that name; choose another name"
            )


def _manifest(
    args: argparse.Namespace, settings: Settings, config: TrainingConfig, images: list[TrainingImage]
) -> StyleManifest:
    from pydantic import ValidationError

    description = args.description or (
        f"A brand style trained from {len(images)} pictures; '{config.trigger}' in a prompt calls it up."
    )
    try:
        return StyleManifest(
            name=config.name,
            title=args.title or config.name.replace("-", " ").capitalize(),
            description=description,
            weights=f"{config.name}.safetensors",
            base_models=[settings.model],
            trigger_words=[config.trigger],
            prompt_template=f"{{prompt}}, {config.trigger}",
            preview=f"{config.name}.png",
            training=TrainingRecord(
                base_model=settings.model,
                variant=config.variant,
                rank=config.rank,
                steps=config.steps,
                learning_rate=config.learning_rate,
                resolution=config.resolution or _default_side(settings),
                seed=config.seed,
                images=len(images),
                image_sha256=sorted(image.sha256 for image in images),
            ),
        )
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]
        field = "-".join(str(p) for p in problem["loc"])
        raise TrainingRefused(f"--{field}: {problem['msg'].removeprefix('Value error, ')}") from None


def _default_side(settings: Settings) -> int:
    from noisett_mcp.schemas import DEMO_RENDER_SIDE

    return DEMO_RENDER_SIDE if settings.is_demo else 1024


def _publish(settings: Settings, upload: bool, staged: Path, name: str) -> str:
    """Move the checked style into the styles folder (the manifest last, each file renamed into place),
    or upload it; return where it went."""
    files = [staged / f"{name}{suffix}" for suffix in (".safetensors", ".png", ".toml")]
    if upload:
        from noisett_mcp.storage.style_upload import upload_style

        anyio.run(upload_style, settings, files)
        return f"Blob container {settings.blob_styles_container!r}"
    folder = settings.resolved_styles_dir
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        tmp = folder / f".{path.name}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, folder / path.name)
    return str(folder)


def _report(config: TrainingConfig, result: object, where: str) -> None:
    from noisett_mcp.engine.train import TrainResult

    assert isinstance(result, TrainResult)
    losses = result.losses
    tenth = max(1, len(losses) // 10)
    first, last = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
    print(f"style {config.name!r} is in {where}: list_styles offers it now")
    print(f"  loss: first tenth {first:.4f}, last tenth {last:.4f} ({len(losses)} steps)")
    print(f"  check: it changes the base image by {result.change:.1f}/255 on average")
    if result.contact_sheet is not None and result.contact_sheet.is_file():
        print(f"  samples: {result.contact_sheet}")

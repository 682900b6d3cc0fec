"""`noisett-mcp styles train` on the demo model: real training steps (the real HiDream transformer class,
peft, diffusers' LoRA saving), the style read by the real StyleCatalog, served over a real MCP session,
and every bad input answered through the real CLI before any training."""

from __future__ import annotations

import base64
import io
import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from mcp import Client
from PIL import Image

from noisett_mcp.cli import _parser
from noisett_mcp.cli import main as cli_main
from noisett_mcp.config import Settings
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from noisett_mcp.storage.azure_account import BlobAccount
from noisett_mcp.storage.style_upload import style_in_blob, upload_style
from noisett_mcp.storage.sync import sync_styles
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.styles.manifest import DEMO_STYLES_DIR, StyleManifest
from noisett_mcp.styles.training import memory_problem
from tests.azurite import Azurite, blob_settings

ORANGE = (230, 120, 40)
# A high rate suits the tiny model's 330k parameters; 32² keeps a step near 0.2 s of CPU.
TRAIN = ["--model", "demo", "--rank", "8", "--learning-rate", "3e-2", "--resolution", "32", "--seed", "0"]
STEPS = 60


def flat_pictures(folder: Path, count: int = 3, colour: tuple[int, int, int] = ORANGE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (64, 64), colour).save(folder / f"picture-{index}.png")
    return folder


def cli(data_dir: Path, model_cache: Path, *argv: str, **env: str) -> int:
    """The CLI in-process (its root logger is handed back after the test by conftest)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NOISETT_DATA_DIR", str(data_dir))
        patch.setenv("MODEL_CACHE_DIR", str(model_cache))
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.raises(SystemExit) as exit_info:
            cli_main(list(argv))
    return int(exit_info.value.code or 0)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Torch's spinning worker threads make a tiny model many times slower on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[tuple[Path, Path]]:
    """One real run of the CLI, shared: (the data folder, the pictures)."""
    root = tmp_path_factory.mktemp("trained")
    pictures = flat_pictures(root / "pictures")
    argv = ["styles", "train", str(pictures), "--name", "orange", "--steps", str(STEPS), *TRAIN]
    assert cli(root / "data", model_cache, *argv, "--sample-every", "30", "--checkpoint-every", "20") == 0
    yield root / "data", pictures


def test_training_lowers_the_loss_and_leaves_a_style_that_styles_check_passes(
    trained: tuple[Path, Path], model_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, pictures = trained
    losses = json.loads((data / "training" / "orange" / "losses.json").read_text())
    assert len(losses) == STEPS
    first, last = np.mean(losses[: STEPS // 10]), np.mean(losses[-STEPS // 10 :])
    assert last < 0.85 * first, f"the loss did not fall: first tenth {first:.3f}, last tenth {last:.3f}"

    styles = data / "loras"
    assert sorted(p.name for p in styles.iterdir()) == ["orange.png", "orange.safetensors", "orange.toml"]
    import tomllib

    manifest = StyleManifest.model_validate(tomllib.loads((styles / "orange.toml").read_text()))
    record = manifest.training
    assert record is not None and (record.rank, record.steps, record.images) == (8, STEPS, 3)
    assert record.base_model == "demo" and record.variant == "fast" and record.resolution == 32
    import hashlib

    hashes = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in pictures.iterdir())
    assert record.image_sha256 == hashes
    assert manifest.prompt_template == "{prompt}, in orange style"
    keys = safetensors.torch.load_file(styles / "orange.safetensors").keys()
    assert all(key.startswith("transformer.") and ".lora_" in key for key in keys)
    # The contact sheet: the base, step 30 and step 60, one row each; no checkpoint left behind.
    with Image.open(data / "training" / "orange" / "contact-sheet.png") as sheet:
        assert sheet.height == 3 * 32
    assert not (data / "training" / "orange" / "checkpoint").exists()

    capsys.readouterr()
    assert cli(data, model_cache, "styles", "check", "--model", "demo") == 0
    assert "ok       orange.toml" in capsys.readouterr().out


async def _image(client: Client, **arguments: Any) -> np.ndarray:
    result = await client.call_tool("generate_image", {"prompt": "a poster", "seed": 5} | arguments)
    assert not result.is_error, result.content[0].text
    uri = result.structured_content["images"][0]["uri"]
    blob = (await client.read_resource(uri)).contents[0].blob
    with Image.open(io.BytesIO(base64.b64decode(blob))) as image:
        return np.asarray(image.convert("RGB"), np.float64)


async def _style_names(client: Client) -> list[str]:
    listing = (await client.call_tool("list_styles", {})).structured_content["styles"]
    return [style["name"] for style in listing]


@pytest.mark.anyio
async def test_the_trained_style_is_listed_over_mcp_without_a_restart_and_renders_closer_to_the_pictures(
    trained: tuple[Path, Path], model_cache: Path, tmp_path: Path
) -> None:
    from noisett_mcp.commands.train import _publish

    data, pictures = trained
    live = tmp_path / "styles"
    settings = Settings(
        model="demo", data_dir=data, styles_dir=live, model_cache_dir=model_cache, preload=False
    )
    source = base64.b64encode((pictures / "picture-0.png").read_bytes()).decode()
    async with Noisett(settings) as service, Client(build_server(service)) as client:
        assert "orange" not in await _style_names(client)
        # What the CLI's last step does, into the folder of a server that is already serving.
        _publish(settings, False, data / "training" / "orange" / "style", "orange")
        assert "orange" in await _style_names(client)
        listing = (await client.call_tool("list_styles", {})).structured_content["styles"]
        orange = next(style for style in listing if style["name"] == "orange")
        assert orange["trigger_words"] == ["in orange style"] and orange["preview"]
        base = await _image(client)
        styled = await _image(client, style="orange")
        # The demo VAE is random and shifts colours: the target is a training picture after one VAE
        # round trip (image-to-image at strength 0), not its raw colour.
        target = await _image(client, source_image=source, strength=0.0)
    to_base, to_style = np.abs(base - target).mean(), np.abs(styled - target).mean()
    print(f"mean |image − round-tripped picture| per channel: base {to_base:.2f}, style {to_style:.2f}")
    assert np.abs(styled - base).mean() > 1.0  # it changes the output
    assert to_style < to_base, (to_base, to_style)


def test_the_style_moves_the_rendered_latents_towards_the_pictures(
    trained: tuple[Path, Path], model_cache: Path
) -> None:
    """Where the style's effect is measured cleanly: the latents the pipeline renders (before the random
    VAE decoder, whose texture drowns small changes in pixels) against the training picture's latents."""
    from noisett_mcp.engine import img2img
    from noisett_mcp.engine.config import EngineConfig
    from noisett_mcp.engine.pipeline import Engine

    data, pictures = trained
    settings = Settings(model="demo", data_dir=data, model_cache_dir=model_cache, preload=False)
    style = StyleCatalog(settings).refresh().styles["orange"]
    engine = Engine(EngineConfig.from_settings(settings))
    with Image.open(pictures / "picture-0.png") as picture:
        target = img2img.encode(engine.pipe, picture.convert("RGB"))

    def latents(active: Any) -> torch.Tensor:
        engine.styles.activate(active, 1.0)
        generator = torch.Generator().manual_seed(5)
        prompt = style.prompt("a poster")
        return engine.pipe(
            prompt, num_inference_steps=16, guidance_scale=0.0, generator=generator, output_type="latent"
        ).images

    to_base = float((latents(None) - target).abs().mean())
    to_style = float((latents(style) - target).abs().mean())
    print(f"mean |latents − picture's latents|: base {to_base:.3f}, style {to_style:.3f}")
    assert to_style < 0.8 * to_base, (to_base, to_style)


def test_ctrl_c_saves_a_checkpoint_that_resume_continues_exactly(tmp_path: Path, model_cache: Path) -> None:
    """Interrupted at step 3 by a real SIGINT, resumed by the CLI: the same weights and losses as a run
    that was never interrupted, so the step count and the optimiser state both carried over."""
    from noisett_mcp.commands.train import _plan
    from noisett_mcp.engine.train import TrainingStopped, train_style

    pictures = flat_pictures(tmp_path / "pictures")
    argv = [
        "styles",
        "train",
        str(pictures),
        "--name",
        "brand",
        "--steps",
        "6",
        "--sample-every",
        "0",
        *TRAIN,
    ]
    interrupted = tmp_path / "interrupted"
    settings = Settings(model="demo", data_dir=interrupted, model_cache_dir=model_cache, preload=False)
    config, manifest = _plan(_parser().parse_args(argv), settings)

    def ctrl_c_at_step_3(step: int, loss: float) -> None:
        if step == 3:
            signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when started in background

    with pytest.raises(TrainingStopped) as stopped:
        train_style(settings, config, manifest, on_step=ctrl_c_at_step_3)
    assert stopped.value.step == 3
    saved = torch.load(stopped.value.checkpoint / "trainer.pt", weights_only=True)
    assert {int(state["step"]) for state in saved["optimizer"]["state"].values()} == {3}
    assert signal.getsignal(signal.SIGINT) is before  # handed back

    assert cli(interrupted, model_cache, *argv) == 2  # an unfinished run is not silently restarted
    assert cli(interrupted, model_cache, *argv, "--resume") == 0
    uninterrupted = tmp_path / "uninterrupted"
    assert cli(uninterrupted, model_cache, *argv) == 0

    def outcome(data: Path) -> tuple[list[float], dict[str, torch.Tensor]]:
        losses = json.loads((data / "training" / "brand" / "losses.json").read_text())
        return losses, safetensors.torch.load_file(data / "loras" / "brand.safetensors")

    (resumed_losses, resumed), (whole_losses, whole) = outcome(interrupted), outcome(uninterrupted)
    assert resumed_losses[:3] == saved["losses"] and len(resumed_losses) == 6
    assert np.allclose(resumed_losses, whole_losses, rtol=1e-5)
    assert resumed.keys() == whole.keys()
    assert all(torch.allclose(resumed[key], whole[key], atol=1e-6) for key in whole)


def test_a_style_that_changes_nothing_does_not_enter_the_catalog(
    tmp_path: Path, model_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pictures = flat_pictures(tmp_path / "pictures")
    argv = ["styles", "train", str(pictures), "--name", "faint", "--steps", "1", "--sample-every", "0"]
    argv += ["--model", "demo", "--resolution", "32", "--learning-rate", "1e-7"]
    assert cli(tmp_path / "data", model_cache, *argv) == 1
    assert "it learnt nothing usable" in capsys.readouterr().err
    assert not (tmp_path / "data" / "loras").exists()
    # The run can go on from its checkpoint (--resume with more steps), rather than start over.
    assert (tmp_path / "data" / "training" / "faint" / "checkpoint" / "trainer.pt").is_file()


def test_the_loss_compares_the_training_output_in_its_patch_layout(model_cache: Path) -> None:
    """In training mode HiDream returns patches, not an image: patch_layout of the inference output must
    give the training output exactly (a wrong layout would train on scrambled targets)."""
    from diffusers import HiDreamImageTransformer2DModel

    from noisett_mcp.engine.demo import write_demo_model
    from noisett_mcp.engine.train import patch_layout

    folder = write_demo_model(model_cache / "noisett-demo-v2")
    transformer = HiDreamImageTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn((1, 4, 16, 16), generator=generator),
        "timesteps": torch.tensor([400.0]),
        "encoder_hidden_states_t5": torch.randn((1, 8, 32), generator=generator),
        "encoder_hidden_states_llama3": torch.randn((2, 1, 8, 16), generator=generator),
        "pooled_embeds": torch.randn((1, 64), generator=generator),
        "return_dict": False,
    }
    with torch.no_grad():
        image = transformer.eval()(**inputs)[0]
        patches = transformer.train()(**inputs)[0]
    assert patches.shape == (1, 4, 64, 4)
    assert torch.allclose(patch_layout(image, 2), patches, atol=1e-5)


def test_bad_input_gets_one_line_naming_what_is_allowed_before_any_training(
    tmp_path: Path, model_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    good = flat_pictures(tmp_path / "good")

    def refused(folder: Path, *extra: str, **env: str) -> str:
        capsys.readouterr()
        assert cli(data, model_cache, "styles", "train", str(folder), *extra, **env) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        assert not (data / "loras").exists() and not (data / "training").exists()
        return lines[0]

    two = flat_pictures(tmp_path / "two", count=2)
    assert "training needs at least 3" in refused(two, "--name", "x", "--model", "demo")
    other = flat_pictures(tmp_path / "other")
    (other / "notes.pdf").write_bytes(b"%PDF-1.4")
    assert "may hold only PNG, JPEG or WebP" in refused(other, "--name", "x", "--model", "demo")
    orphan = flat_pictures(tmp_path / "orphan")
    (orphan / "missing.txt").write_text("a caption")
    assert "captions with no picture: missing.txt" in refused(orphan, "--name", "x", "--model", "demo")
    fake = flat_pictures(tmp_path / "fake")
    (fake / "fake.png").write_bytes(b"not a picture at all")
    assert "fake.png is not a PNG, JPEG or WebP" in refused(fake, "--name", "x", "--model", "demo")
    cut = flat_pictures(tmp_path / "cut")
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buffer, "PNG")
    (cut / "cut.png").write_bytes(buffer.getvalue()[:-300])
    assert "cut.png is damaged or truncated" in refused(cut, "--name", "x", "--model", "demo")
    heavy = flat_pictures(tmp_path / "heavy")
    (heavy / "heavy.png").write_bytes(b"\x89PNG" + bytes(10 * 2**20))
    assert "the most allowed is 10 MiB" in refused(heavy, "--name", "x", "--model", "demo")
    bomb = flat_pictures(tmp_path / "bomb")
    Image.new("1", (8000, 6000)).save(bomb / "bomb.png")
    assert "8000×6000 pixels; the most allowed is 40 megapixels" in refused(
        bomb, "--name", "x", "--model", "demo"
    )
    assert "is taken" in refused(good, "--name", "demo-flat", "--model", "demo")
    assert "lowercase letters" in refused(good, "--name", "Bad Name", "--model", "demo")
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert "is not a HiDream-I1 pipeline (it is a FluxPipeline)" in refused(
        good, "--name", "x", "--model", str(flux)
    )
    nf4 = refused(good, "--name", "x", "--model", "demo", "--quantize", "nf4", NOISETT_DEVICE="cpu")
    assert "--quantize nf4 needs a CUDA GPU" in nf4
    assert "16 to 64 pixels a side" in refused(good, "--name", "x", "--model", "demo", "--resolution", "100")
    assert "no checkpoint" in refused(good, "--name", "x", "--model", "demo", "--resume")
    assert "--upload needs Blob storage" in refused(good, "--name", "x", "--model", "demo", "--upload")


def test_not_enough_gpu_memory_says_how_much_is_needed_and_what_lowers_it() -> None:
    problem = memory_problem("none", 1024, free_gib=23.5, total_gib=24.0)
    assert problem is not None and "needs about" in problem and "23.5 GiB free of 24.0 GiB" in problem
    assert "--quantize nf4 needs about" in problem and "--resolution 512" in problem
    assert memory_problem("nf4", 1024, free_gib=23.5, total_gib=24.0) is None  # NF4 fits a 24 GB GPU
    assert memory_problem("none", 1024, free_gib=79.0, total_gib=80.0) is None


@pytest.mark.anyio
async def test_upload_puts_the_style_in_the_styles_container_that_replicas_sync(
    azurite: Azurite, tmp_path: Path
) -> None:
    """What --upload does with a checked style: weights and preview first, the manifest last, nothing
    overwritten; a replica's styles sync then offers it."""
    settings = Settings(model="demo", data_dir=tmp_path / "replica", preload=False, **blob_settings(azurite))
    staged = tmp_path / "staged"
    staged.mkdir()
    shutil.copyfile(DEMO_STYLES_DIR / "demo-flat.safetensors", staged / "brand.safetensors")
    Image.new("RGB", (8, 8), ORANGE).save(staged / "brand.png")
    manifest = (DEMO_STYLES_DIR / "demo-flat.toml").read_text().replace("demo-flat", "brand")
    (staged / "brand.toml").write_text(manifest)
    files = [staged / name for name in ("brand.toml", "brand.safetensors", "brand.png")]

    assert not await style_in_blob(settings, "brand")
    assert (await upload_style(settings, files))[-1] == "brand.toml"
    assert await style_in_blob(settings, "brand")
    with pytest.raises(FileExistsError, match=r"brand\.toml is already in the Blob container"):
        await upload_style(settings, files[:1])
    account = BlobAccount.from_settings(settings)
    try:
        await sync_styles(account, settings)
    finally:
        await account.aclose()
    assert "brand" in StyleCatalog(settings).refresh().styles

"""Image-to-image through a real MCP client session (in memory), on the demo model: the real
HiDreamImagePipeline class with tiny random weights and its FlowMatchEulerDiscreteScheduler."""

from __future__ import annotations

import base64
import hashlib
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mcp import Client, StdioServerParameters
from PIL import Image

from noisett_mcp import images
from noisett_mcp.config import Settings
from noisett_mcp.http import create_app
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from tests.support import child_env, serve_asgi

pytestmark = pytest.mark.anyio

STEPS = 10


def picture(width: int = 64, height: int = 64) -> Image.Image:
    """A source with shapes and colours: bands, a square and a gradient."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2] = (200, 40, 40)
    pixels[height // 2 :] = (30, 60, 210)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (250, 230, 20)
    pixels[:, :, 1] += np.linspace(0, 40, width, dtype=np.uint8)[None, :]
    return Image.fromarray(pixels)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


SOURCE = png(picture())
SOURCE_B64 = base64.b64encode(SOURCE).decode()


async def generate(client: Client, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool("generate_image", {"prompt": "a harbour", "steps": STEPS, **arguments})
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def pixels(client: Client, image_id: str) -> np.ndarray:
    resource = await client.read_resource(f"image://{image_id}")
    with Image.open(io.BytesIO(base64.b64decode(resource.contents[0].blob))) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


async def render(client: Client, **arguments: Any) -> np.ndarray:
    made = await generate(client, **arguments)
    return await pixels(client, made["images"][0]["id"])


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


async def test_strength_one_with_a_seed_gives_the_text_to_image_pixels(client: Client) -> None:
    text_to_image = await render(client, seed=21)
    from_source = await render(client, seed=21, source_image=SOURCE_B64, strength=1.0)
    assert np.array_equal(from_source, text_to_image)


async def test_strength_zero_returns_the_source_after_one_vae_round_trip(
    client: Client, service: Noisett
) -> None:
    made = await generate(client, seed=3, source_image=SOURCE_B64, strength=0.0)
    out = await pixels(client, made["images"][0]["id"])
    # The round trip written out here by hand: [-1, 1] pixels, the VAE's mode, its shift and scale.
    assert service.runner is not None
    vae = (await service.runner.engine()).pipe.vae
    x = torch.from_numpy(np.asarray(picture(), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        z = (vae.encode(x).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor
        y = vae.decode(z / vae.config.scaling_factor + vae.config.shift_factor).sample
    expected = ((y[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).numpy()
    # Tolerance: 1 level of 255 per channel, the rounding of the 8-bit PNG; no denoising step ran.
    assert np.abs(out - expected).max() <= 1.0
    assert made["images"][0]["steps"] == STEPS and made["images"][0]["strength"] == 0.0


async def test_distance_from_the_source_grows_with_strength(client: Client) -> None:
    kept = await render(client, seed=8, source_image=SOURCE_B64, strength=0.0)
    distances = [
        distance(await render(client, seed=8, source_image=SOURCE_B64, strength=s), kept)
        for s in (0.3, 0.6, 0.9)
    ]
    assert distances[0] > 0 and distances == sorted(distances) and len(set(distances)) == 3, distances


async def test_the_same_source_seed_and_strength_give_identical_pixels_twice(client: Client) -> None:
    first = await render(client, seed=13, source_image=SOURCE_B64, strength=0.5)
    again = await render(client, seed=13, source_image=SOURCE_B64, strength=0.5)
    other_seed = await render(client, seed=14, source_image=SOURCE_B64, strength=0.5)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_seed)


async def test_restyling_with_a_style_differs_from_the_same_call_without_it(client: Client) -> None:
    plain = await generate(client, seed=4, source_image=SOURCE_B64, strength=0.6)
    styled = await generate(client, seed=4, source_image=SOURCE_B64, strength=0.6, style="demo-flat")
    assert styled["images"][0]["style"] == "demo-flat"
    assert styled["images"][0]["source_sha256"] == plain["images"][0]["source_sha256"]
    assert (
        distance(
            await pixels(client, plain["images"][0]["id"]), await pixels(client, styled["images"][0]["id"])
        )
        > 1
    )


async def test_variations_of_an_image_are_count_new_seeds_from_it(client: Client) -> None:
    original = (await generate(client, seed=30))["images"][0]
    variations = (await generate(client, source_image_id=original["id"], strength=0.3, count=3, seed=100))[
        "images"
    ]
    assert [v["seed"] for v in variations] == [100, 101, 102]
    assert {v["source_image_id"] for v in variations} == {original["id"]}
    stored = await client.read_resource(f"image://{original['id']}")
    expected_sha = hashlib.sha256(base64.b64decode(stored.contents[0].blob)).hexdigest()
    assert {v["source_sha256"] for v in variations} == {expected_sha}
    made = [await pixels(client, v["id"]) for v in variations]
    assert not np.array_equal(made[0], made[1]) and not np.array_equal(made[1], made[2])


async def test_a_base64_source_round_trips_through_the_record_and_the_png(client: Client) -> None:
    made = (await generate(client, seed=2, source_image=SOURCE_B64, strength=0.4))["images"][0]
    sha = hashlib.sha256(SOURCE).hexdigest()
    assert made["source_sha256"] == sha and made["source_image_id"] is None and made["strength"] == 0.4
    assert made["source_fit"] == "source 64×64 scaled to 64×64"
    record = (await client.call_tool("get_image", {"image_id": made["id"]})).structured_content["image"]
    assert (record["source_sha256"], record["strength"]) == (sha, 0.4)
    resource = await client.read_resource(f"image://{made['id']}")
    meta = images.read_metadata(base64.b64decode(resource.contents[0].blob))
    assert (meta["source_sha256"], meta["strength"], meta["seed"]) == (sha, 0.4, 2)


async def test_the_source_is_scaled_and_cropped_to_the_aspect_ratio_and_the_result_says_how(
    client: Client,
) -> None:
    wide = base64.b64encode(png(picture(300, 100))).decode()
    result = await generate(client, source_image=wide, aspect_ratio="4:3")
    made = result["images"][0]
    assert (made["width"], made["height"]) == (72, 54)
    assert "Started from the source at strength 0.6: source 300×100 scaled to 162×54" in result["message"]
    assert (
        made["source_fit"]
        == "source 300×100 scaled to 162×54 and centre-cropped to 72×54 (90 px from its width cut)"
    )


async def test_progress_counts_the_steps_that_run_from_the_source(client: Client) -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    result = await client.call_tool(
        "generate_image",
        {"prompt": "a kite", "steps": 8, "count": 2, "source_image": SOURCE_B64, "strength": 0.5},
        progress_callback=on_progress,
    )
    assert not result.is_error
    steps = [u for u in updates if u[2] and "step" in u[2]]
    # Both images in one batch (NOISETT_BATCH=auto on a CPU): each of the 4 steps advances both.
    assert [u[0] for u in steps] == [2, 4, 6, 8] and {u[1] for u in updates} == {8}
    assert steps[-1][2] == "images 1–2/2, step 4/4"


async def test_a_foreign_source_image_id_answers_exactly_like_an_unknown_one(
    client: Client, service: Noisett
) -> None:
    mine = (await generate(client, seed=1))["images"][0]["id"]
    record = await service.store.load_record(mine)
    assert record is not None
    foreign = "f" * 32
    stored = await service.load_image(mine)
    await service.store.save_image(
        stored.data,
        stored.mime_type,
        record.model_copy(update={"id": foreign, "owner": "tenant/someone-else"}),
    )
    unknown = "e" * 32
    answers = []
    for image_id in (foreign, unknown):
        result = await client.call_tool("generate_image", {"prompt": "x", "source_image_id": image_id})
        assert result.is_error
        answers.append(result.content[0].text.replace(image_id, "ID"))
    assert answers[0] == answers[1] and "no image with id 'ID'" in answers[0]
    got = await client.call_tool("get_image", {"image_id": foreign})  # the same words as get_image's
    assert got.content[0].text.replace(foreign, "ID").split(": ", 1)[1] == answers[0].split(": ", 1)[1]


GOOD = {"prompt": "a harbour", "steps": 2}
BAD_INPUT = [
    ({"source_image": base64.b64encode(b"plain text").decode()}, ["not a PNG, JPEG or WebP"]),
    ({"source_image": "%%% not base64 %%%"}, ["source_image is not valid base64"]),
    ({"source_image": "data:image/png;base64," + "A" * 14_500_000}, ["MiB", "the most allowed is 10 MiB"]),
    ({"source_image_id": "0123456789abcdef0123456789abcdef"}, ["no image with id", "generate_image"]),
    ({"source_image_id": "../../etc/passwd"}, ["invalid image id", "32 lowercase hexadecimal"]),
    ({"source_image": SOURCE_B64, "strength": -0.1}, ["strength", "greater than or equal to 0"]),
    ({"source_image": SOURCE_B64, "strength": 1.5}, ["strength", "less than or equal to 1"]),
    ({"strength": 0.5}, ["strength applies only with a source image"]),
    ({"source_image": SOURCE_B64, "source_image_id": "0" * 32}, ["give one source image"]),
    ({"source_image": SOURCE_B64, "source_path": "/etc/hostname"}, ["give one source image"]),
    (
        {"source_path": "/etc/passwd"},
        ["source_path works only when the server runs on your computer (stdio)"],
    ),
]


@pytest.mark.parametrize(
    ("arguments", "expected"), BAD_INPUT, ids=[f"case-{i}" for i in range(len(BAD_INPUT))]
)
async def test_bad_source_input_gets_a_clear_error_and_the_server_keeps_serving(
    client: Client, arguments: dict[str, Any], expected: list[str]
) -> None:
    result = await client.call_tool("generate_image", {**GOOD, **arguments})
    assert result.is_error
    text = result.content[0].text
    for words in expected:
        assert words in text, f"{words!r} not in {text!r}"
    assert "pydantic.dev" not in text
    assert not (await client.call_tool("generate_image", GOOD)).is_error


async def test_a_decompression_bomb_is_refused_and_the_server_keeps_serving(client: Client) -> None:
    from tests.unit.test_sources import bomb_png

    bomb = base64.b64encode(bomb_png(50_000, 50_000)).decode()
    result = await client.call_tool("generate_image", {**GOOD, "source_image": bomb})
    assert result.is_error and "claims too many pixels" in result.content[0].text
    assert not (await client.call_tool("generate_image", GOOD)).is_error


async def test_a_local_source_path_is_read_over_stdio(service: Noisett, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "photo.png"
    path.write_bytes(SOURCE)
    async with Client(build_server(service, local_files=True)) as local:
        made = (await generate(local, source_path=str(path), strength=0.3))["images"][0]
        assert made["source_sha256"] == hashlib.sha256(SOURCE).hexdigest()
        missing = await local.call_tool("generate_image", {**GOOD, "source_path": str(tmp_path / "nope.png")})
        assert missing.is_error and "cannot be used: give the full path" in missing.content[0].text


async def test_the_cli_s_stdio_server_reads_source_path_and_the_http_app_refuses_it(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(SOURCE)
    arguments = {"prompt": "a harbour", "steps": 2, "source_path": str(path), "strength": 0.5}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "noisett_mcp", "serve"], env=child_env(settings)
    )
    async with Client(params) as stdio:
        made = await stdio.call_tool("generate_image", arguments)
        assert not made.is_error, made.content[0].text
        assert made.structured_content["images"][0]["source_sha256"] == hashlib.sha256(SOURCE).hexdigest()
    async with serve_asgi(create_app(Noisett(settings))) as base, Client(f"{base}/mcp") as http:
        refused = await http.call_tool("generate_image", arguments)
        assert refused.is_error and "source_path works only when the server runs on your computer" in (
            refused.content[0].text
        )

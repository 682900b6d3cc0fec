"""Source images: checked on their header before decoding, and fitted to the rendered size."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib

import pytest
from PIL import Image

from noisett_mcp import sources
from noisett_mcp.errors import RequestError
from noisett_mcp.schemas import GenerationRequest


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header that claims width × height pixels, with one tiny IDAT: a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_each_allowed_format_is_accepted_with_its_size_and_sha256(fmt: str) -> None:
    data = encoded(Image.new("RGB", (40, 30), (10, 20, 30)), fmt)
    source = sources.check(data)
    assert (source.width, source.height) == (40, 30)
    assert source.sha256 == hashlib.sha256(data).hexdigest() and source.data == data


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"hello, not an image", "not a PNG, JPEG or WebP"),
        (encoded(Image.new("RGB", (8, 8)), "GIF"), "not a PNG, JPEG or WebP"),
        (encoded(Image.new("RGB", (8, 8)), "BMP"), "not a PNG, JPEG or WebP"),
        (bomb_png(60_000, 60_000), "claims too many pixels"),
        (bomb_png(7000, 7000), "claims 7000×7000 pixels; the most allowed is 40 megapixels"),
        (encoded(Image.effect_noise((64, 64), 50).convert("RGB"))[:-200], "damaged or truncated"),
    ],
    ids=["text", "gif", "bmp", "bomb", "over-the-pixel-cap", "truncated"],
)
def test_what_is_not_a_usable_image_is_refused_with_a_reason(data: bytes, words: str) -> None:
    with pytest.raises(RequestError, match=words):
        sources.check(data)


def test_a_bomb_is_refused_from_its_header_without_decoding() -> None:
    data = bomb_png(100_000, 100_000)  # 10 gigapixels: decoding would need 30 GB
    assert len(data) < 100
    with pytest.raises(RequestError, match="scale it down first"):
        sources.check(data)


def test_bytes_over_the_cap_are_refused_before_anything_is_read() -> None:
    with pytest.raises(RequestError, match="the most allowed is 10 MiB"):
        sources.check(b"\x89PNG" + b"\0" * sources.MAX_SOURCE_BYTES)


def test_base64_with_or_without_a_data_url_prefix_decodes() -> None:
    data = encoded(Image.new("RGB", (4, 4)))
    text = base64.b64encode(data).decode()
    assert sources.from_base64(text) == data
    assert sources.from_base64(f"data:image/png;base64,{text}") == data
    with pytest.raises(RequestError, match="not valid base64"):
        sources.from_base64("not base64 at all!")
    with pytest.raises(RequestError, match="MiB; the most allowed"):
        sources.from_base64("A" * (sources.MAX_SOURCE_BYTES * 2))


def test_a_wide_source_is_scaled_to_cover_and_centre_cropped() -> None:
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 50, 100))  # blue left quarter: cropped away
    data = encoded(wide)
    fitted = sources.fit(data, 64, 64)
    assert fitted.size == (64, 64) and fitted.mode == "RGB"
    left = fitted.getpixel((0, 32))
    assert isinstance(left, tuple) and left[0] > 200  # the left edge is red: the blue quarter is gone
    assert sources.describe_fit(sources.check(data), 64, 64) == (
        "source 200×100 scaled to 128×64 and centre-cropped to 64×64 (64 px from its width cut)"
    )
    assert sources.describe_fit(sources.check(data), 128, 64) == "source 200×100 scaled to 128×64"


def test_exif_orientation_is_applied_before_fitting() -> None:
    portrait_on_its_side = Image.new("RGB", (60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: shown upright it is 30 wide, 60 tall
    data = encoded(portrait_on_its_side, "JPEG", exif=exif.tobytes())
    source = sources.check(data)
    assert (source.width, source.height) == (30, 60)


def test_a_local_path_is_read_and_a_missing_one_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "photo.png"
    path.write_bytes(encoded(Image.new("RGB", (4, 4))))
    assert sources.from_path(str(path)) == path.read_bytes()
    with pytest.raises(RequestError, match="cannot be used: give the full path"):
        sources.from_path(str(tmp_path / "missing.png"))
    with pytest.raises(RequestError, match="cannot be used: give the full path"):
        sources.from_path(str(tmp_path))


def test_a_request_starts_from_a_source_only_when_it_names_one_and_the_variant_can() -> None:
    plain = GenerationRequest(prompt="p")
    by_id = GenerationRequest(prompt="p", source_image_id="0" * 32)
    assert sources.wanted(plain, given=False, variant="fast") is False
    assert sources.wanted(by_id, given=False, variant="dev") is True
    assert sources.wanted(plain, given=True, variant="fast") is True
    with pytest.raises(RequestError, match="strength applies only with a source image"):
        sources.wanted(GenerationRequest(prompt="p", strength=0.5), given=False, variant="fast")
    with pytest.raises(RequestError, match="give one source image: source_image_id or source_image"):
        sources.wanted(by_id, given=True, variant="fast")
    with pytest.raises(RequestError, match="HiDream-I1-Full, whose scheduler cannot start part-way"):
        sources.wanted(by_id, given=False, variant="full")

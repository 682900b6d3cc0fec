"""Image encoding: metadata travels in the file, formats sniff right, and inline copies fit."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from noisett_mcp import images


def noise(side: int) -> Image.Image:
    return Image.effect_noise((side, side), 64).convert("RGB")


@pytest.mark.parametrize("fmt", list(images.FORMATS))
def test_each_format_keeps_its_metadata_and_sniffs_as_itself(fmt: str) -> None:
    data = images.encode(noise(32), fmt, {"seed": 5, "prompt": "a fox"})
    assert images.read_metadata(data) == {"seed": 5, "prompt": "a fox"}
    assert images.sniff_mime_type(data) == images.FORMATS[fmt].mime_type
    assert images.BY_EXTENSION[images.FORMATS[fmt].extension].name == fmt


def test_unknown_bytes_sniff_as_octet_stream() -> None:
    assert images.sniff_mime_type(b"hello") == "application/octet-stream"


def test_an_image_within_budget_goes_inline_whole() -> None:
    data = images.encode(noise(16), "png", {})
    inline = images.fit_inline(data, "image/png", budget=len(data))
    assert inline.is_full and inline.data == data and inline.mime_type == "image/png"


def test_an_image_over_budget_becomes_the_largest_jpeg_that_fits() -> None:
    data = images.encode(noise(256), "png", {})
    inline = images.fit_inline(data, "image/png", budget=20_000)
    assert not inline.is_full and inline.mime_type == "image/jpeg" and len(inline.data) <= 20_000
    with Image.open(io.BytesIO(inline.data)) as small:
        assert small.format == "JPEG" and "JPEG copy" in inline.description


def test_a_preview_is_a_small_jpeg() -> None:
    small = images.preview(images.encode(noise(700), "png", {}), max_side=128)
    with Image.open(io.BytesIO(small)) as image:
        assert image.format == "JPEG" and max(image.size) == 128

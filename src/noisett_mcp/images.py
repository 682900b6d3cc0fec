"""Image encoding: full images with their generation metadata embedded, and small copies that fit
inside a client's tool-result limit."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from PIL import Image, PngImagePlugin


@dataclass(frozen=True)
class ImageFormatInfo:
    name: str  # as in ImageFormat: png, webp, jpeg
    mime_type: str
    extension: str  # with its dot
    magic: bytes  # the file's first bytes (WebP: at offset 8, after the RIFF size)
    magic_offset: int = 0

    def matches(self, data: bytes) -> bool:
        return data[self.magic_offset : self.magic_offset + len(self.magic)] == self.magic


# The one table of the image formats we write: every MIME type, extension and sniff comes from here.
FORMATS: dict[str, ImageFormatInfo] = {
    "png": ImageFormatInfo("png", "image/png", ".png", b"\x89PNG"),
    "webp": ImageFormatInfo("webp", "image/webp", ".webp", b"WEBP", 8),
    "jpeg": ImageFormatInfo("jpeg", "image/jpeg", ".jpeg", b"\xff\xd8"),
}
BY_MIME_TYPE = {f.mime_type: f for f in FORMATS.values()}
BY_EXTENSION = {f.extension: f for f in FORMATS.values()}


def sniff_mime_type(data: bytes) -> str:
    """The MIME type of image bytes by their magic, or application/octet-stream."""
    for fmt in FORMATS.values():
        if fmt.matches(data):
            return fmt.mime_type
    return "application/octet-stream"


METADATA_KEY = "noisett"  # PNG tEXt key holding the JSON of every generation parameter
_EXIF_IMAGE_DESCRIPTION = 0x010E

PREVIEW_MAX_SIDE = 512
# Claude Desktop rejects tool results over 1 MiB. Base64 grows data by 4/3, and the JSON around it
# (structured content, links, text) needs room too: keep the raw inline bytes well under 1 MiB × 3/4.
INLINE_BUDGET_BYTES = 600_000


def encode(image: Image.Image, fmt: str, metadata: dict[str, object]) -> bytes:
    """Encode the full image; the metadata travels inside the file so the image can be reproduced."""
    text = json.dumps(metadata, sort_keys=True, default=str)
    buffer = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text(METADATA_KEY, text)
        for key in ("prompt", "negative_prompt", "seed", "steps", "guidance", "model", "style"):
            if key in metadata:
                info.add_text(key, str(metadata[key]))
        image.save(buffer, "PNG", pnginfo=info, optimize=False)
    elif fmt == "jpeg":
        image.convert("RGB").save(buffer, "JPEG", quality=92, comment=text.encode())
    elif fmt == "webp":
        exif = Image.Exif()
        exif[_EXIF_IMAGE_DESCRIPTION] = text
        image.save(buffer, "WEBP", quality=92, exif=exif.tobytes())
    else:
        raise ValueError(f"unknown image format {fmt!r}; use png, webp or jpeg")
    return buffer.getvalue()


def read_metadata(data: bytes) -> dict[str, object]:
    """The generation metadata embedded by `encode`, or {} if there is none."""
    with Image.open(io.BytesIO(data)) as image:
        text = image.info.get(METADATA_KEY)
        if text is None and image.format == "JPEG":
            comment = image.info.get("comment")
            text = comment.decode() if isinstance(comment, bytes) else comment
        if text is None and image.format == "WEBP":
            text = image.getexif().get(_EXIF_IMAGE_DESCRIPTION)
    return json.loads(text) if text else {}


def preview(data: bytes, max_side: int = PREVIEW_MAX_SIDE, quality: int = 80) -> bytes:
    """A small JPEG for inline display."""
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB")
        small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@dataclass(frozen=True)
class InlineImage:
    data: bytes
    mime_type: str
    description: str  # "full" or what was reduced, for the assistant to read

    @property
    def is_full(self) -> bool:
        return self.description == "full"


def fit_inline(data: bytes, mime_type: str, budget: int = INLINE_BUDGET_BYTES) -> InlineImage:
    """The full image if it fits the budget, else the largest JPEG copy that does."""
    if len(data) <= budget:
        return InlineImage(data, mime_type, "full")
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    for quality in (90, 80):
        candidate = _jpeg(rgb, quality)
        if len(candidate) <= budget:
            return InlineImage(
                candidate, "image/jpeg", f"JPEG copy at full size ({width}×{height}, q{quality})"
            )
    side = max(width, height)
    while side > 64:
        side = int(side * 0.75)
        small = rgb.copy()
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        candidate = _jpeg(small, 85)
        if len(candidate) <= budget:
            return InlineImage(candidate, "image/jpeg", "JPEG copy downscaled to {}×{}".format(*small.size))
    raise ValueError("image cannot be reduced to fit inline")  # unreachable for real images


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()

"""Source images for image-to-image: checked before anything decodes them, and fitted to the size the
model renders. No torch here: the front checks a source before it queues the job, and the runner fits it
(the same code on a GPU worker that loads the source from the store).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from noisett_mcp.errors import RequestError
from noisett_mcp.schemas import IMAGE_TO_IMAGE_VARIANTS, GenerationRequest
from noisett_mcp.styles.files import UnsafeFile, read_capped, regular_file

MAX_SOURCE_BYTES = 10 * 1024 * 1024
# Checked on the header, before decoding: a few KB of PNG can claim gigapixels (a decompression bomb).
MAX_SOURCE_PIXELS = 40_000_000
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP")
_DATA_URL = re.compile(r"^data:image/[a-z]+;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class Source:
    """A checked source image: its bytes as given, their sha256, and its upright size."""

    data: bytes
    sha256: str
    width: int
    height: int
    image_id: str | None = None  # when it is one of the caller's images


def wanted(request: GenerationRequest, *, given: bool, variant: str) -> bool:
    """Whether the request starts from a source image (by id, or `given` as bytes); raise RequestError
    for a contradictory request, or for a variant that cannot start from one."""
    if request.source_image_id is None and not given:
        if request.strength is not None:
            raise RequestError(
                "strength applies only with a source image: pass source_image_id or source_image too"
            )
        return False
    if request.source_image_id is not None and given:
        raise RequestError("give one source image: source_image_id or source_image, not both")
    if variant not in IMAGE_TO_IMAGE_VARIANTS:
        raise RequestError(
            f"this server runs HiDream-I1-{variant.title()}, whose scheduler cannot start part-way through "
            "its schedule (diffusers ignores custom sigmas for UniPC), so it cannot start from a source "
            "image. HiDream-I1-Dev and -Fast can (NOISETT_VARIANT names the variant); leave the "
            "source out here."
        )
    return True


def from_base64(text: str) -> bytes:
    """The bytes of a base64 source (a `data:image/...;base64,` prefix is allowed)."""
    text = _DATA_URL.sub("", text.strip(), count=1)
    if len(text) > (MAX_SOURCE_BYTES + 2) // 3 * 4 + 4:
        raise RequestError(_too_big("source_image", len(text) * 3 // 4))
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(
            "source_image is not valid base64: send the bytes of a PNG, JPEG or WebP file, base64-encoded"
        ) from exc


def from_path(text: str, what: str = "source_path") -> bytes:
    """The bytes of a local source file (stdio only: the server runs as the user there, and reads what
    their account can read), named `what` in messages (the CLI's --source). Only a regular file is read,
    opened non-blocking and read with a cap, so a FIFO or a device never holds a thread. Every reason a
    path cannot be used gives the same answer: which path was tried and what is needed, nothing more."""
    path = Path(text).expanduser()
    # A relative path is read from the server's folder, which is seldom the client's: say where.
    unusable = RequestError(
        f"{what} {text!r} (tried {path.absolute()}) cannot be used: give the full path of a PNG, JPEG or "
        f"WebP file on this computer, at most {MAX_SOURCE_BYTES // 2**20} MiB, that your account can read"
    )
    try:
        real, _ = regular_file(path, None)
        data = read_capped(real, MAX_SOURCE_BYTES, "source")
        _open(data).close()  # the header only: not an image reads like any other unusable path
    except (OSError, ValueError, RuntimeError, UnsafeFile, RequestError):  # ValueError: a NUL in it
        raise unusable from None
    return data


def check(data: bytes, image_id: str | None = None) -> Source:
    """Check that the bytes are one PNG, JPEG or WebP image within the caps, and decode it once so that
    a corrupt file is refused now rather than on the GPU. Raise RequestError otherwise."""
    if len(data) > MAX_SOURCE_BYTES:
        raise RequestError(_too_big("the source image", len(data)))
    with _open(data) as image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise RequestError(
                f"the source image is damaged or truncated ({exc}); send a complete file"
            ) from exc
        width, height = ImageOps.exif_transpose(image).size
    return Source(data, hashlib.sha256(data).hexdigest(), width, height, image_id)


def fit(data: bytes, width: int, height: int) -> Image.Image:
    """The source upright, in RGB, scaled to cover width × height and centre-cropped to it."""
    with _open(data) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    return ImageOps.fit(upright, (width, height), Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def describe_fit(source: Source, width: int, height: int) -> str:
    """What `fit` does to this source, in words, for the result and the record."""
    scale = max(width / source.width, height / source.height)
    scaled_w, scaled_h = round(source.width * scale), round(source.height * scale)
    text = f"source {source.width}×{source.height} scaled to {scaled_w}×{scaled_h}"
    if (scaled_w, scaled_h) == (width, height):
        return text
    if scaled_w > width:
        cut = f"{scaled_w - width} px from its width"
    else:
        cut = f"{scaled_h - height} px from its height"
    return f"{text} and centre-cropped to {width}×{height} ({cut} cut)"


def _open(data: bytes) -> Image.Image:
    """Open the image and read its header only; refuse other formats and bombs before any decoding."""
    try:
        image = Image.open(io.BytesIO(data), formats=SOURCE_FORMATS)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RequestError(
            "the source is not a PNG, JPEG or WebP image: send the bytes of one image file"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise RequestError(_bomb(None)) from exc
    pixels = image.width * image.height
    if pixels > MAX_SOURCE_PIXELS:
        image.close()
        raise RequestError(_bomb((image.width, image.height)))
    return image


def _too_big(what: str, size: int) -> str:
    return f"{what} is {size / 2**20:.1f} MiB; the most allowed is {MAX_SOURCE_BYTES // 2**20} MiB"


def _bomb(size: tuple[int, int] | None) -> str:
    claimed = f" claims {size[0]}×{size[1]} pixels" if size else " claims too many pixels"
    return (
        f"the source image{claimed}; the most allowed is {MAX_SOURCE_PIXELS / 1e6:g} megapixels "
        "(the model renders about one): scale it down first"
    )

"""Source images for image-to-image: checked before anything decodes them, and fitted to the size the
model renders. No torch here: the front checks a source once the queue has room for its job, and the
runner fits it (the same code on a GPU worker that loads the source from the store).

Every decode in the process holds pixels of one budget (`DECODES`) while it runs, so that concurrent
requests cannot each decode a large source at once: past the budget, a decode waits for the others.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from noisett_mcp.errors import RequestError
from noisett_mcp.schemas import IMAGE_TO_IMAGE_VARIANTS, GenerationRequest
from noisett_mcp.styles.files import UnsafeFile, read_capped, regular_file

MAX_SOURCE_BYTES = 10 * 1024 * 1024
# Checked on the header, before decoding: a few KB of PNG can claim gigapixels (a decompression bomb).
MAX_SOURCE_PIXELS = 40_000_000
# A progressive JPEG has about 10 scans, and each scan costs a pass over the whole image: thousands of
# them in a few hundred KB cost seconds per decode. Counted on the markers, before decoding.
MAX_JPEG_SCANS = 100
_START_OF_SCAN = b"\xff\xda"
# Pixels decoded at once in this process, by all requests together: one source at the cap (about 120 MiB
# as RGB), or several smaller ones.
DECODE_BUDGET_PIXELS = MAX_SOURCE_PIXELS
# Threads that a service (or a runner) lends to source decodes: a decode that waits for the budget then
# waits in its caller's task, not in one of the threads anyio shares with every other blocking call.
DECODE_THREADS = 2
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP")
_DATA_URL = re.compile(r"^data:image/[a-z]+;base64,", re.IGNORECASE)


class DecodeBudget:
    """Pixels that decodes may hold at once, shared by every thread of the process. A decode larger
    than the whole budget holds all of it, alone. `taken`, `in_use` and `waiting` are read-only counts
    for health and tests."""

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels
        self._free = pixels
        self._taken = 0
        self._waiting = 0
        self._changed = threading.Condition()

    @property
    def taken(self) -> int:
        """How many decodes have held the budget since the process started."""
        return self._taken

    @property
    def in_use(self) -> int:
        return self.pixels - self._free

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold `pixels` of the budget for a decode (in a worker thread: it may wait for others)."""
        pixels = min(max(pixels, 1), self.pixels)
        with self._changed:
            self._waiting += 1
            try:
                self._changed.wait_for(lambda: self._free >= pixels)
            finally:
                self._waiting -= 1
            self._free -= pixels
            self._taken += 1
        try:
            yield
        finally:
            with self._changed:
                self._free += pixels
                self._changed.notify_all()


DECODES = DecodeBudget(DECODE_BUDGET_PIXELS)


@dataclass(frozen=True)
class Source:
    """A checked source image: its bytes as given, their sha256, and its upright size."""

    data: bytes
    sha256: str
    width: int
    height: int
    image_id: str | None = None  # when it is one of the caller's images
    # Fitted to the rendered size from the same decode, when the runner of this process renders it.
    fitted: Image.Image | None = field(default=None, repr=False, compare=False)


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


def check(data: bytes, image_id: str | None = None, fit_to: tuple[int, int] | None = None) -> Source:
    """Check that the bytes are one PNG, JPEG or WebP image within the caps, and decode it once (within
    the process's decode budget) so that a corrupt file is refused now rather than on the GPU; with
    `fit_to`, also fit it to that size from the same decode (`Source.fitted`). Raise RequestError."""
    if len(data) > MAX_SOURCE_BYTES:
        raise RequestError(_too_big("the source image", len(data)))
    with _open(data) as image, DECODES.hold(image.width * image.height):
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise RequestError(
                f"the source image is damaged or truncated ({exc}); send a complete file"
            ) from exc
        upright = ImageOps.exif_transpose(image)
        fitted = _fit(upright, *fit_to) if fit_to is not None else None
        width, height = upright.size
    return Source(data, hashlib.sha256(data).hexdigest(), width, height, image_id, fitted)


def fit(data: bytes, width: int, height: int) -> Image.Image:
    """The source upright, in RGB, scaled to cover width × height and centre-cropped to it. Call it in a
    worker thread: it decodes, within the process's decode budget."""
    with _open(data) as image, DECODES.hold(image.width * image.height):
        return _fit(ImageOps.exif_transpose(image), width, height)


def _fit(upright: Image.Image, width: int, height: int) -> Image.Image:
    rgb = upright.convert("RGB")
    return ImageOps.fit(rgb, (width, height), Image.Resampling.LANCZOS, centering=(0.5, 0.5))


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
    """Open the image and read its header only; refuse other formats, bombs and JPEGs with too many
    scans before any decoding."""
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
    # Every scan starts with an SOS marker, and entropy-coded data never holds one (a 0xFF byte there is
    # followed by 0x00 or a restart marker): the count is an upper bound of the scans libjpeg would run.
    if image.format == "JPEG" and (scans := data.count(_START_OF_SCAN)) > MAX_JPEG_SCANS:
        image.close()
        raise RequestError(
            f"the source JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are allowed (a progressive JPEG "
            "has about 10, a baseline one 1): save it again as a baseline JPEG or a PNG"
        )
    return image


def _too_big(what: str, size: int) -> str:
    return f"{what} is {size / 2**20:.1f} MiB; the most allowed is {MAX_SOURCE_BYTES // 2**20} MiB"


def _bomb(size: tuple[int, int] | None) -> str:
    claimed = f" claims {size[0]}×{size[1]} pixels" if size else " claims too many pixels"
    return (
        f"the source image{claimed}; the most allowed is {MAX_SOURCE_PIXELS / 1e6:g} megapixels "
        "(the model renders about one): scale it down first"
    )

"""Every error Noisett raises on purpose. Each message says what was wrong and what is allowed, so it can
go to a user or an assistant as it is.

NoisettError
├── RequestError          bad input the caller can fix (a ValueError too)
│   ├── InvalidImageId    an id that is not 32 lowercase hex characters
│   └── ImageNotFound     no such image here, or not the caller's (the two read the same)
├── QueueFull             busy: retry in N seconds
│   └── UserQueueFull     this caller already has NOISETT_MAX_QUEUE_PER_USER jobs waiting
├── StorageUnavailable    the image store cannot be reached, or refused the request
├── GenerationCancelled   a job stopped at the next denoising step because its caller gave up
├── BatchOutOfMemory      a request's images in one batch did not fit the GPU: render them one at a time
├── StyleRefused          a style that cannot be offered (bad manifest, adapter for another model)
├── StyleUnavailable      a style that exists but cannot be used right now (a download failed)
├── SourceUnavailable     an image-to-image job's source is gone from the store (it expired)
├── ImageToImageUnsupported  the model's scheduler cannot start from a source image
├── ModelUnavailable      the model cannot load here (no CUDA for NOISETT_DEVICE, no hub and no cache)
│   └── AzureStorageNeeded  a `blob://` model, but no Azure storage is configured to fetch it from
├── ModelLoadFailed       this load failed (a damaged or missing file, storage hung): the next request retries
├── UnsafeFile            a style file that is not read: a link out of the folder, not a regular file,
│                         or too large (the catalog refuses its style with this reason)
├── TokenRejected         why an access token was refused: logged for the operator, never sent
└── NoIdentity            a verified token that names no principal to own images (a 401 that says why)
"""

from __future__ import annotations

import os
from pathlib import Path


class NoisettError(Exception):
    """Base of every error raised on purpose: its message is fit for a user."""


class RequestError(NoisettError, ValueError):
    """Bad input the caller can fix; the message says what is allowed."""


class InvalidImageId(RequestError):
    def __init__(self, value: object) -> None:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        super().__init__(
            f"invalid image id {shown}: ids are 32 lowercase hexadecimal characters, "
            "as returned by generate_image"
        )


class ImageNotFound(RequestError, LookupError):
    def __init__(self, image_id: str) -> None:
        super().__init__(
            f"no image with id {image_id!r}: it was never made here, or it has expired. "
            "Ids come from generate_image."
        )


class QueueFull(NoisettError):
    def __init__(self, waiting: int, retry_after: float) -> None:
        self.waiting = waiting
        self.retry_after = retry_after
        super().__init__(
            f"The image server is busy: {waiting} generation(s) are already waiting, the most it queues. "
            f"Retry in about {max(1, round(retry_after))} s."
        )


class UserQueueFull(QueueFull):
    """One caller's share of the queue is used up: others can still queue."""

    def __init__(self, waiting: int, limit: int, retry_after: float) -> None:
        self.waiting = waiting
        self.limit = limit
        self.retry_after = retry_after
        NoisettError.__init__(
            self,
            f"You already have {waiting} generation(s) waiting, the most one caller may queue "
            f"(NOISETT_MAX_QUEUE_PER_USER={limit}). Retry in about {max(1, round(retry_after))} s, once one "
            "of them has started, or cancel one with cancel_image.",
        )


class StorageUnavailable(NoisettError):
    """The store cannot be reached right now; the message says so without secrets."""


class GenerationCancelled(NoisettError):
    """Raised inside a job (by the engine's step callback): denoising stops at the next step."""


class BatchOutOfMemory(NoisettError):
    """The engine's signal to the job runner: the batch ran out of GPU memory, and batching is now off."""

    def __init__(self, images: int) -> None:
        super().__init__(f"{images} images in one batch ran out of GPU memory; render them one at a time")
        self.images = images


class StyleRefused(NoisettError):
    """A style that cannot be offered; the message names its manifest and says what to fix."""

    def __init__(self, source: Path, reason: str) -> None:
        # Clients read this: name files relative to the styles folder, never by their server path.
        for folder in {str(source.parent), str(source.parent.resolve())}:
            reason = reason.replace(folder + os.sep, "")
        super().__init__(f"{source.name}: {reason}")
        self.source = source
        self.reason = reason


class StyleUnavailable(NoisettError):
    """A style that exists but cannot be used right now (a hub download failed); not its fault."""


class SourceUnavailable(NoisettError):
    """An image-to-image job's source image cannot be loaded where the job runs."""


class ImageToImageUnsupported(NoisettError):
    """The model's scheduler cannot start part-way through its schedule (HiDream-I1-Full's UniPC)."""


class ModelUnavailable(NoisettError):
    """The model cannot be loaded in this process, whatever is asked: the message says what to use."""


class AzureStorageNeeded(ModelUnavailable):
    """A setting names something in Azure storage (a `blob://` model), and no Azure storage is set."""

    def __init__(self, what: str) -> None:
        super().__init__(needs_azure_storage(what))


class UnsafeFile(NoisettError):
    """Why a style file is not read; the message is safe to show to a client (no outside paths)."""


class TokenRejected(NoisettError):
    """Why a token was refused; logged for the operator, never sent to the client (the auth gate answers
    401 without it, so a caller learns nothing about the checks)."""


class NoIdentity(NoisettError):
    """A verified token that names no principal the server can own images for; the message says why."""


class ModelLoadFailed(NoisettError):
    """This load of the model failed, naming the file and what is wrong; nothing half-loaded serves, and
    the next request tries the load again (a file re-uploaded, storage back)."""


AZURE_STORAGE_NEEDED = "set AZURE_STORAGE_CONNECTION_STRING or NOISETT_BLOB_ACCOUNT_URL"


def needs_azure_storage(what: str) -> str:
    """The one message for a feature that needs Azure storage configured."""
    return f"{what} needs Azure storage: {AZURE_STORAGE_NEEDED}"


def first_line(exc: BaseException) -> str:
    """An exception as one short log line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__

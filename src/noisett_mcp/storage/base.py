"""The storage interface and what it stores.

An image's `ImageRecord` holds its generation parameters plus its job state (status, progress, error),
so any process that reaches the store can answer get_image for it. A job's `JobControl` (a cancel
request, which the GPU worker watches) lives under its own key, apart from the image records: a job id
is never mistaken for an image id. A source image given as bytes for a job that runs elsewhere (the
Azure queue's message is too small for it) lives under its sha256, apart from both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from noisett_mcp.errors import InvalidImageId
from noisett_mcp.health import StorageHealth
from noisett_mcp.schemas import ImageInfo, is_image_id

if TYPE_CHECKING:
    from noisett_mcp.storage.azure_account import BlobAccount

# Job state: changes while the job runs, so it is not part of an image's parameters.
JOB_STATE_FIELDS = frozenset({"status", "progress", "error", "steps_done", "batch", "worker", "heartbeat_at"})


SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: str) -> str:
    """A source's key: 64 lowercase hex characters, checked before it reaches a path or a blob name."""
    if not SHA256_PATTERN.fullmatch(value):
        raise ValueError(f"not a sha256 hex digest: {value[:80]!r}")
    return value


def check_image_id(value: object) -> str:
    """Every store method calls this first: a malformed id never reaches a path or a blob name."""
    if not isinstance(value, str) or not is_image_id(value):
        raise InvalidImageId(value)
    return value


class ImageRecord(ImageInfo):
    """One image as stored: what get_image shows (ImageInfo), plus whose it is and where its job stands."""

    model_config = ConfigDict(extra="ignore")

    job_id: str
    index: int
    owner: str
    steps_done: int = 0  # job-wide: a front follows a worker's progress by it
    # Job-wide: [first, stop) of the images rendering together in one batch now, if any.
    batch: list[int] = Field(default_factory=list)
    # Which process owns the job, and when it last said so: another replica tells a job running
    # elsewhere from one whose process died by these.
    worker: str | None = None
    heartbeat_at: str | None = None
    created_at: str
    finished_at: str | None = None
    versions: dict[str, str] | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    def parameters(self) -> dict[str, Any]:
        """What reproduces the image, without its job state: embedded in the file and its blob metadata."""
        return self.model_dump(mode="json", exclude=set(JOB_STATE_FIELDS | {"uri", "url"}))

    def info(self) -> ImageInfo:
        """The wire view of the record (without owner and job bookkeeping)."""
        return ImageInfo.model_validate(self.model_dump(include=set(ImageInfo.model_fields)))

    def encode(self) -> bytes:
        """The stored form: JSON, without the per-view download link."""
        return self.model_dump_json(exclude={"url"}).encode()


class JobControl(BaseModel):
    """Instructions for a job that runs elsewhere; the worker reads them while it renders. Under a call's
    key (jobs/calls.py) instead of a job id, the record points at the job that call started."""

    cancel: bool = False
    job_id: str | None = None


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    mime_type: str


class ImageStore(Protocol):
    async def save_record(self, record: ImageRecord) -> None:
        """Create or replace an image's record (under record.id)."""

    async def load_record(self, image_id: str) -> ImageRecord | None:
        """The record, or None for an unknown id."""

    async def save_image(self, data: bytes, mime_type: str, record: ImageRecord) -> None:
        """Store the finished image and its final record."""

    async def load_image(self, image_id: str) -> StoredImage | None:
        """The finished image's bytes, or None."""

    async def image_url(self, image_id: str) -> str | None:
        """A link to the full image outside MCP (a file URL, a SAS URL), where the store has one."""

    async def save_control(self, job_id: str, control: JobControl) -> None:
        """Create or replace a job's control record."""

    async def load_control(self, job_id: str) -> JobControl | None:
        """The job's control record, or None."""

    async def save_source(self, sha256: str, data: bytes) -> None:
        """Store a source image's bytes under their sha256, for a worker elsewhere to load."""

    async def load_source(self, sha256: str) -> bytes | None:
        """A stored source image's bytes, or None."""

    async def is_pending(self, image_id: str) -> bool:
        """True while an image or its record still waits to reach shared storage (the Blob spool)."""

    async def sweep(self, older_than_days: float) -> int:
        """Delete images older than the given age; return how many went."""

    async def run(self) -> None:
        """Background work for the store's lifetime (Blob: upload what the spool holds); returns when
        there is none. The service runs it in its task group."""

    def health(self) -> StorageHealth | None:
        """The store's state for /health (Blob: reachable, spooled), or None where there is none."""

    @property
    def account(self) -> BlobAccount | None:
        """The Azure storage account behind the store (for model and style sync), or None."""

    async def aclose(self) -> None: ...

"""The storage interface. Records are JSON-able dicts: an image's parameters plus its job state
(status, progress, error), so any process that reaches the store can answer get_image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from noisett_mcp.models import is_image_id


class InvalidImageId(ValueError):
    def __init__(self, value: object) -> None:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        super().__init__(
            f"invalid image id {shown}: ids are 32 lowercase hexadecimal characters, "
            "as returned by generate_image"
        )


class StorageUnavailable(RuntimeError):
    """The store cannot be reached right now; the message says so without secrets."""


def check_image_id(value: object) -> str:
    """Every store method calls this first: a malformed id never reaches a path or a blob name."""
    if not is_image_id(value):
        raise InvalidImageId(value)
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    mime_type: str


class ImageStore(Protocol):
    async def save_record(self, image_id: str, record: dict[str, Any]) -> None:
        """Create or replace an image's record (parameters and job state)."""

    async def load_record(self, image_id: str) -> dict[str, Any] | None:
        """The record, or None for an unknown id."""

    async def save_image(self, image_id: str, data: bytes, mime_type: str, record: dict[str, Any]) -> None:
        """Store the finished image and its final record."""

    async def load_image(self, image_id: str) -> StoredImage | None:
        """The finished image's bytes, or None."""

    async def image_url(self, image_id: str) -> str | None:
        """A link to the full image outside MCP (a file URL, a SAS URL), where the store has one."""

    async def sweep(self, older_than_days: float) -> int:
        """Delete images older than the given age; return how many went."""

    async def run(self) -> None:
        """Background work for the store's lifetime (Blob: upload what the spool holds); returns when
        there is none. The service runs it in its task group."""

    async def aclose(self) -> None: ...

"""Images in a local folder: `<id>.json` holds the record, `<id>.<ext>` the image,
`jobs/<job id>.json` a job's control record and `sources/<sha256>` a source image's bytes."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from noisett_mcp.health import StorageHealth
from noisett_mcp.images import BY_EXTENSION, BY_MIME_TYPE
from noisett_mcp.storage.base import ImageRecord, JobControl, StoredImage, check_image_id, check_sha256

if TYPE_CHECKING:
    from noisett_mcp.storage.azure_account import BlobAccount

CONTROL_FOLDER = "jobs"
SOURCE_FOLDER = "sources"


class LocalImageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # A file URL opens only on this computer, and names a server path: the HTTP app turns it off.
        self.file_urls = True

    # File I/O runs in a worker thread so the event loop keeps answering.
    async def save_record(self, record: ImageRecord) -> None:
        path = self._path(record.id, ".json")
        await anyio.to_thread.run_sync(self._write, path, record.encode())

    async def load_record(self, image_id: str) -> ImageRecord | None:
        data = await self._read(self._path(image_id, ".json"))
        return None if data is None else ImageRecord.model_validate_json(data)

    async def save_image(self, data: bytes, mime_type: str, record: ImageRecord) -> None:
        path = self._path(record.id, BY_MIME_TYPE[mime_type].extension)
        await anyio.to_thread.run_sync(self._write, path, data)
        await self.save_record(record)

    async def load_image(self, image_id: str) -> StoredImage | None:
        path = await anyio.to_thread.run_sync(self._find_image, image_id)
        if path is None:
            return None
        data = await anyio.to_thread.run_sync(path.read_bytes)
        return StoredImage(data, BY_EXTENSION[path.suffix].mime_type)

    async def image_url(self, image_id: str) -> str | None:
        if not self.file_urls:
            return None
        path = await anyio.to_thread.run_sync(self._find_image, image_id)
        return path.resolve().as_uri() if path else None

    async def save_control(self, job_id: str, control: JobControl) -> None:
        path = self.root / CONTROL_FOLDER / f"{check_image_id(job_id)}.json"
        await anyio.to_thread.run_sync(self._write, path, control.model_dump_json().encode())

    async def load_control(self, job_id: str) -> JobControl | None:
        data = await self._read(self.root / CONTROL_FOLDER / f"{check_image_id(job_id)}.json")
        return None if data is None else JobControl.model_validate_json(data)

    async def save_source(self, sha256: str, data: bytes) -> None:
        path = self.root / SOURCE_FOLDER / check_sha256(sha256)
        await anyio.to_thread.run_sync(self._write, path, data)

    async def load_source(self, sha256: str) -> bytes | None:
        return await self._read(self.root / SOURCE_FOLDER / check_sha256(sha256))

    async def is_pending(self, image_id: str) -> bool:
        return False  # every write is final

    async def sweep(self, older_than_days: float) -> int:
        return await anyio.to_thread.run_sync(self._sweep, older_than_days)

    async def run(self) -> None:
        pass  # nothing in the background: every write is final

    def health(self) -> StorageHealth | None:
        return None

    @property
    def account(self) -> BlobAccount | None:
        return None

    async def aclose(self) -> None:
        pass

    async def _read(self, path: Path) -> bytes | None:
        try:
            return await anyio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            return None

    def _write(self, path: Path, data: bytes) -> None:
        atomic_write(path, data)

    def _path(self, image_id: str, suffix: str) -> Path:
        return self.root / f"{check_image_id(image_id)}{suffix}"

    def _find_image(self, image_id: str) -> Path | None:
        for suffix in BY_EXTENSION:
            path = self._path(image_id, suffix)
            if path.is_file():
                return path
        return None

    def _sweep(self, older_than_days: float) -> int:
        if older_than_days <= 0 or not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_days * 86400
        removed: set[str] = set()
        for path in [*self.root.iterdir(), *self._control_files()]:
            if path.suffix in BY_EXTENSION or path.suffix == ".json" or path.parent.name == SOURCE_FOLDER:
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        if path.parent == self.root:
                            removed.add(path.stem)
                except FileNotFoundError:
                    pass
        return len(removed)

    def _control_files(self) -> list[Path]:
        folders = (self.root / CONTROL_FOLDER, self.root / SOURCE_FOLDER)
        return [path for folder in folders if folder.is_dir() for path in folder.iterdir()]


def atomic_write(path: Path, data: bytes) -> None:
    """Write beside the target and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

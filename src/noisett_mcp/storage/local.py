"""Images in a local folder: `<id>.json` holds the record, `<id>.<ext>` the image."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from noisett_mcp.storage.base import StoredImage, check_image_id

_EXTENSIONS = {"image/png": ".png", "image/webp": ".webp", "image/jpeg": ".jpeg"}
_MIME_BY_EXTENSION = {ext: mime for mime, ext in _EXTENSIONS.items()}


class LocalImageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # File I/O runs in a worker thread so the event loop keeps answering.
    async def save_record(self, image_id: str, record: dict[str, Any]) -> None:
        path = self._path(image_id, ".json")
        await anyio.to_thread.run_sync(self._write, path, json.dumps(record, sort_keys=True).encode())

    async def load_record(self, image_id: str) -> dict[str, Any] | None:
        path = self._path(image_id, ".json")
        try:
            data = await anyio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            return None
        return json.loads(data)

    async def save_image(self, image_id: str, data: bytes, mime_type: str, record: dict[str, Any]) -> None:
        await anyio.to_thread.run_sync(self._write, self._path(image_id, _EXTENSIONS[mime_type]), data)
        await self.save_record(image_id, record)

    async def load_image(self, image_id: str) -> StoredImage | None:
        path = await anyio.to_thread.run_sync(self._find_image, image_id)
        if path is None:
            return None
        data = await anyio.to_thread.run_sync(path.read_bytes)
        return StoredImage(data, _MIME_BY_EXTENSION[path.suffix])

    async def image_url(self, image_id: str) -> str | None:
        path = await anyio.to_thread.run_sync(self._find_image, image_id)
        return path.resolve().as_uri() if path else None

    async def sweep(self, older_than_days: float) -> int:
        return await anyio.to_thread.run_sync(self._sweep, older_than_days)

    async def run(self) -> None:
        pass  # nothing in the background: every write is final

    async def aclose(self) -> None:
        pass

    def _write(self, path: Path, data: bytes) -> None:
        atomic_write(path, data)

    def _path(self, image_id: str, suffix: str) -> Path:
        return self.root / f"{check_image_id(image_id)}{suffix}"

    def _find_image(self, image_id: str) -> Path | None:
        for suffix in _MIME_BY_EXTENSION:
            path = self._path(image_id, suffix)
            if path.is_file():
                return path
        return None

    def _sweep(self, older_than_days: float) -> int:
        if older_than_days <= 0 or not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_days * 86400
        removed: set[str] = set()
        for path in self.root.iterdir():
            if path.suffix in _MIME_BY_EXTENSION or path.suffix == ".json":
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed.add(path.stem)
                except FileNotFoundError:
                    pass
        return len(removed)


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

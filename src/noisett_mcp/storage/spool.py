"""The spool: a local write-ahead copy of every image and record bound for remote storage, and the
background task that uploads it. Nothing leaves the spool until its upload has been verified, so a
storage outage costs latency, never an image. Backend-neutral: the Blob store supplies the uploads.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio

from noisett_mcp.images import BY_EXTENSION
from noisett_mcp.storage.base import StoredImage, check_image_id
from noisett_mcp.storage.local import LocalImageStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpoolEntry:
    """What the spool held for one image id at one moment."""

    image_id: str
    record: bytes | None
    image: StoredImage | None
    image_path: Path | None


class Spool(LocalImageStore):
    """The local store's layout (`<id>.json`, `<id>.<ext>`) in its own folder, plus what an uploader
    needs: the pending ids, a snapshot of one entry, and a drop that keeps anything rewritten since."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        # Writes and drops run in worker threads: the lock keeps a drop from deleting a newer write.
        self._files = threading.Lock()

    def _write(self, path: Path, data: bytes) -> None:
        with self._files:
            super()._write(path, data)

    async def pending(self) -> list[str]:
        """Ids with anything in the spool, oldest first."""
        return await anyio.to_thread.run_sync(self.pending_now)

    def pending_now(self) -> list[str]:
        """`pending()`, read on the calling thread: a small folder, for a health check."""
        if not self.root.is_dir():
            return []
        oldest: dict[str, float] = {}
        for path in self.root.iterdir():
            if path.name.startswith(".") or not path.is_file():
                continue  # half-written temporary files
            try:
                image_id = check_image_id(path.stem)
                mtime = path.stat().st_mtime
            except (ValueError, FileNotFoundError):
                continue
            oldest[image_id] = min(mtime, oldest.get(image_id, mtime))
        return sorted(oldest, key=oldest.__getitem__)

    async def snapshot(self, image_id: str) -> SpoolEntry | None:
        return await anyio.to_thread.run_sync(self._snapshot, image_id)

    def _snapshot(self, image_id: str) -> SpoolEntry | None:
        record_path = self._path(image_id, ".json")
        try:
            record = record_path.read_bytes()
        except FileNotFoundError:
            record = None
        image_path = self._find_image(image_id)
        image = None
        if image_path is not None:
            try:
                image = StoredImage(image_path.read_bytes(), BY_EXTENSION[image_path.suffix].mime_type)
            except FileNotFoundError:
                image_path = None
        if record is None and image is None:
            return None
        return SpoolEntry(image_id, record, image, image_path)

    async def drop_image(self, entry: SpoolEntry) -> None:
        await anyio.to_thread.run_sync(self._drop_image, entry)

    def _drop_image(self, entry: SpoolEntry) -> None:
        # An id's image is written once: the same size means the same file.
        assert entry.image is not None and entry.image_path is not None
        with self._files:
            try:
                if entry.image_path.stat().st_size == len(entry.image.data):
                    entry.image_path.unlink()
            except FileNotFoundError:
                pass

    async def drop_record(self, entry: SpoolEntry) -> None:
        await anyio.to_thread.run_sync(self._drop_record, entry)

    def _drop_record(self, entry: SpoolEntry) -> None:
        path = self._path(entry.image_id, ".json")
        with self._files:
            try:
                if path.read_bytes() == entry.record:
                    path.unlink()  # unchanged since the snapshot: the uploaded copy is current
            except FileNotFoundError:
                pass


class Uploads(Protocol):
    """The remote side: each call uploads one part and verifies it, or raises."""

    async def upload_image(self, image_id: str, image: StoredImage, record: bytes) -> None: ...

    async def upload_record(self, image_id: str, record: bytes) -> None: ...


class SpoolUploader:
    """Moves spool entries to remote storage: at once while storage is healthy, otherwise from a
    background task that retries with exponential backoff and full jitter. A restart drains the spool.

    `is_outage(exc)` says whether a failure means storage is unreachable (stop this round and back
    off) rather than a problem with one entry (log it, keep the entry, go on with the others).

    A request never waits on storage longer than `deadline` seconds: past it, the entry stays in the
    spool and storage counts as unreachable. Storage that hangs rather than refuses is noticed without
    any request too: `probe` (a cheap read) runs whenever storage has not answered for `deadline` s."""

    def __init__(
        self,
        spool: Spool,
        uploads: Uploads,
        is_outage: Callable[[BaseException], bool],
        describe: Callable[[BaseException], str] = str,
        *,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        deadline: float = 5.0,
        probe: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.spool = spool
        self.uploads = uploads
        self.is_outage = is_outage
        self.describe = describe
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.deadline = deadline
        self.probe = probe
        self.healthy = True
        self._outage_since: float | None = None
        self._last_answer = time.monotonic()
        self._work = anyio.Event()  # new entries to upload
        self._recovered = anyio.Event()  # a request reached storage again: stop backing off
        self._locks: weakref.WeakValueDictionary[str, anyio.Lock] = weakref.WeakValueDictionary()

    async def try_upload(self, image_id: str) -> None:
        """Upload an id's spool entry now if storage looks healthy; otherwise, or when this fails,
        leave it to the background task. Never raises a storage error: the spool holds the data."""
        if self.healthy:
            try:
                with anyio.fail_after(self.deadline):
                    await self.upload(image_id)
                return
            except Exception as exc:
                self._failed(exc, image_id)
        self._work.set()

    async def upload(self, image_id: str) -> None:
        """Upload what the spool holds for one id: the image first, so that no replica ever reads a
        `done` record whose image is missing; then the record. Each part leaves the spool once verified."""
        lock = self._locks.get(image_id)
        if lock is None:
            lock = self._locks[image_id] = anyio.Lock()
        async with lock:
            entry = await self.spool.snapshot(image_id)
            if entry is None:
                return
            if entry.image is not None:
                if entry.record is None:
                    return  # between the two writes of save_image: the writer uploads next
                await self.uploads.upload_image(image_id, entry.image, entry.record)
                await self.spool.drop_image(entry)
            if entry.record is not None:
                await self.uploads.upload_record(image_id, entry.record)
                await self.spool.drop_record(entry)
        self._succeeded()

    def reached_storage(self) -> None:
        """A request just succeeded: if uploads are backing off, retry now."""
        self._last_answer = time.monotonic()
        if not self.healthy:
            self._recovered.set()

    def unreachable(self, exc: BaseException) -> None:
        """A read found storage unreachable (or hung past the deadline): report it, as an upload would."""
        self._failed(exc, "a read")

    async def run(self) -> None:
        """Upload what the spool holds and, with a probe, watch that storage still answers."""
        async with anyio.create_task_group() as tg:
            if self.probe is not None:
                tg.start_soon(self._watch)
            await self._upload_forever()

    async def _watch(self) -> None:
        """Probe storage whenever it has been silent for half a deadline: a hang shows on /health within
        about 1.5 deadlines, and recovery as soon as it answers again."""
        assert self.probe is not None
        quiet = self.deadline / 2
        while True:
            await anyio.sleep(max(0.0, self._last_answer + quiet - time.monotonic()))
            if time.monotonic() - self._last_answer < quiet:
                continue
            try:
                with anyio.fail_after(self.deadline):
                    await self.probe()
            except Exception as exc:
                if self.is_outage(exc):
                    self._failed(exc, "a health probe")
                self._last_answer = time.monotonic()  # probe again half a deadline from now
            else:
                self._last_answer = time.monotonic()
                self._succeeded()

    async def _upload_forever(self) -> None:
        failures = 0
        while True:
            self._work = anyio.Event()
            if await self.drain():
                failures = 0
                await self._work.wait()
                continue
            failures += 1
            delay = min(self.max_backoff, self.min_backoff * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
            self._recovered = anyio.Event()
            with anyio.move_on_after(delay):
                await self._recovered.wait()

    async def drain(self) -> bool:
        """One pass over the spool; False when storage was unreachable."""
        for image_id in await self.spool.pending():
            try:
                await self.upload(image_id)
            except Exception as exc:
                self._failed(exc, image_id)
                if self.is_outage(exc):
                    return False
        return True

    def _failed(self, exc: BaseException, image_id: str) -> None:
        if not self.is_outage(exc):
            log.error("upload of %s failed and will be retried: %s", image_id, self.describe(exc))
            return
        if self.healthy:
            self.healthy, self._outage_since = False, time.monotonic()
            log.error(
                "storage unreachable (%s); images and records wait in the spool at %s and are uploaded "
                "when it returns",
                self.describe(exc),
                self.spool.root,
            )
        else:
            log.warning("storage still unreachable: %s", self.describe(exc))

    def _succeeded(self) -> None:
        self._last_answer = time.monotonic()
        if not self.healthy:
            down = time.monotonic() - (self._outage_since or time.monotonic())
            log.warning("storage reachable again after %.0f s; uploading the spool", down)
            self.healthy, self._outage_since = True, None
            self._work.set()

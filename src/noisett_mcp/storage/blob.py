"""Images and records in Azure Blob Storage, written through a local spool so that no image is lost
when storage is unreachable.

In the images container, `<id>` is the image (content type, cache-control, a download file name, and
the generation parameters as metadata), `<id>.json` its record, readable by every replica, and
`jobs/<job id>.json` a job's control record. The account itself (client, credential, SAS links, what a
failure means) is `azure_account.py`.

Importing this module costs about 0.6 s (the Azure SDK): `open_store` imports it only when asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote

import anyio
from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.storage.blob import ContentSettings

from noisett_mcp.config import Settings
from noisett_mcp.errors import StorageUnavailable
from noisett_mcp.health import StorageHealth
from noisett_mcp.images import BY_MIME_TYPE
from noisett_mcp.storage.azure_account import BlobAccount, describe_error, is_outage
from noisett_mcp.storage.base import ImageRecord, JobControl, StoredImage, check_image_id, check_sha256
from noisett_mcp.storage.spool import Spool, SpoolUploader

log = logging.getLogger(__name__)
# The SDK logs every request and response at INFO: far too loud for a server's log.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

IMAGE_CACHE_CONTROL = "private, max-age=31536000, immutable"  # an id's image never changes
RECORD_CACHE_CONTROL = "no-cache"  # a record changes while its job runs
SHUTDOWN_DRAIN_SECONDS = 10.0  # within Container Apps' 30 s termination grace
CONTROL_PREFIX = "jobs/"
SOURCE_PREFIX = "sources/"
_METADATA_VALUE_LIMIT = 1024  # Azure allows 8 KiB of metadata per blob: long prompts are cut here
# Header values must be printable ASCII: everything else (and % itself) is percent-encoded.
_METADATA_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def encode_metadata(parameters: dict[str, Any]) -> dict[str, str]:
    """Generation parameters as blob metadata: printable ASCII, percent-encoded where needed, long
    values cut (the full values are in the record and the image's own text chunks)."""
    metadata: dict[str, str] = {}
    truncated = []
    for key, value in sorted(parameters.items()):
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
        encoded = quote(text, safe=_METADATA_SAFE)
        if len(encoded) > _METADATA_VALUE_LIMIT:
            encoded = _cut(text, _METADATA_VALUE_LIMIT)
            truncated.append(key)
        metadata[key] = encoded
    if truncated:
        metadata["truncated"] = ",".join(truncated)
    return metadata


def _cut(text: str, limit: int) -> str:
    """The longest encoded prefix within `limit` that ends on a whole character."""
    pieces, size = [], 0
    for char in text:
        piece = quote(char, safe=_METADATA_SAFE)
        if size + len(piece) > limit:
            break
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)


def decode_metadata(metadata: dict[str, str]) -> dict[str, str]:
    return {key: unquote(value) for key, value in metadata.items()}


class BlobImageStore:
    """The `ImageStore` on Azure Blob Storage. Every write lands in the local spool first, then is
    uploaded (at once while storage answers, else by the background task in `run`); reads look in the
    spool first, so an image made during an outage is still served by the replica that made it."""

    def __init__(
        self,
        account: BlobAccount,
        spool: Spool,
        container: str,
        sas_minutes: float = 15.0,
        deadline: float = 5.0,
    ) -> None:
        self.account = account
        self.spool = spool
        self.container_name = container
        self.container = account.container(container)
        self.sas_minutes = sas_minutes
        self.deadline = deadline  # the longest a request waits on Blob (a hung account must not stall it)
        self.uploader = SpoolUploader(
            spool, self, is_outage, describe_error, deadline=deadline, probe=self._probe
        )

    # --- ImageStore ---
    async def save_record(self, record: ImageRecord) -> None:
        await self.spool.save_record(record)
        await self.uploader.try_upload(record.id)

    async def load_record(self, image_id: str) -> ImageRecord | None:
        record = await self.spool.load_record(check_image_id(image_id))
        if record is not None:
            return record
        data = await self._download(f"{image_id}.json")
        return None if data is None else ImageRecord.model_validate_json(data[0])

    async def save_image(self, data: bytes, mime_type: str, record: ImageRecord) -> None:
        await self.spool.save_image(data, mime_type, record)
        await self.uploader.try_upload(record.id)

    async def load_image(self, image_id: str) -> StoredImage | None:
        stored = await self.spool.load_image(check_image_id(image_id))
        if stored is not None:
            return stored
        found = await self._download(image_id)
        return None if found is None else StoredImage(*found)

    async def image_url(self, image_id: str) -> str | None:
        if await self.spool.load_image(check_image_id(image_id)) is not None:
            return None  # not uploaded yet: no link can reach it
        try:
            with anyio.fail_after(self.deadline):
                return await self.account.sas_url(self.container_name, image_id, self.sas_minutes)
        except Exception as exc:  # a user delegation key needs storage: no link beats no answer
            log.warning("no SAS link for %s: %s", image_id, describe_error(exc))
            return None

    async def save_control(self, job_id: str, control: JobControl) -> None:
        """Straight to Blob storage, not through the spool: a control record only matters to a worker
        elsewhere, and a cancel that cannot reach storage has nothing to stop there."""
        name = f"{CONTROL_PREFIX}{check_image_id(job_id)}.json"
        await self._put_direct(
            name, control.model_dump_json().encode(), "application/json", RECORD_CACHE_CONTROL
        )

    async def load_control(self, job_id: str) -> JobControl | None:
        data = await self._download(f"{CONTROL_PREFIX}{check_image_id(job_id)}.json")
        return None if data is None else JobControl.model_validate_json(data[0])

    async def save_source(self, sha256: str, data: bytes) -> None:
        """Straight to Blob storage, like a control record: only a worker elsewhere reads it, and a job
        whose source cannot reach storage is refused before it is queued. A sha256's bytes never change."""
        name = f"{SOURCE_PREFIX}{check_sha256(sha256)}"
        await self._put_direct(name, data, "application/octet-stream", IMAGE_CACHE_CONTROL)

    async def load_source(self, sha256: str) -> bytes | None:
        data = await self._download(f"{SOURCE_PREFIX}{check_sha256(sha256)}")
        return None if data is None else data[0]

    async def is_pending(self, image_id: str) -> bool:
        return await self.spool.snapshot(check_image_id(image_id)) is not None

    async def sweep(self, older_than_days: float) -> int:
        """Delete images and records last written before the cutoff (what Azure's lifecycle rule does,
        for accounts without one). The spool is never swept: it holds what is not uploaded yet."""
        if older_than_days <= 0:
            return 0
        cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
        removed: set[str] = set()
        try:
            async for blob in self.container.list_blobs():
                if blob.last_modified < cutoff:
                    try:
                        await self.container.delete_blob(blob.name)
                    except ResourceNotFoundError:
                        continue  # another replica swept it
                    if not blob.name.startswith((CONTROL_PREFIX, SOURCE_PREFIX)):
                        removed.add(blob.name.removesuffix(".json"))
        except ResourceNotFoundError:
            return 0  # no container yet: nothing to sweep
        return len(removed)

    async def run(self) -> None:
        """Upload what the spool holds (a restart drains it), then whatever lands there later."""
        if self.account.create_containers:
            try:
                await self.account.ensure_container(self.container_name)
            except Exception as exc:  # the uploader retries, and logs, while storage is away
                log.warning("could not check Blob container %r: %s", self.container_name, describe_error(exc))
        await self.uploader.run()

    def health(self) -> StorageHealth:
        """For /health: an outage does not fail the probe (images wait in the spool), it shows here."""
        return StorageHealth(
            backend="azure-blob",
            container=self.container_name,
            reachable=self.uploader.healthy,
            spooled=len(self.spool.pending_now()),
        )

    async def aclose(self) -> None:
        # One last pass before the process goes: a replica scaled in may never start again here.
        if self.spool.pending_now():
            with anyio.move_on_after(SHUTDOWN_DRAIN_SECONDS, shield=True):
                await self.uploader.drain()
            if left := self.spool.pending_now():
                log.warning(
                    "%d image(s) still wait in the spool at %s: a restart uploads them",
                    len(left),
                    self.spool.root,
                )
        await self.account.aclose()

    # --- Uploads (called by the spool's uploader) ---
    async def upload_image(self, image_id: str, image: StoredImage, record: bytes) -> None:
        extension = BY_MIME_TYPE[image.mime_type].extension if image.mime_type in BY_MIME_TYPE else ".bin"
        settings = ContentSettings(
            content_type=image.mime_type,
            cache_control=IMAGE_CACHE_CONTROL,
            content_disposition=f'inline; filename="{image_id}{extension}"',
            content_md5=bytearray(hashlib.md5(image.data).digest()),
        )
        metadata = encode_metadata(ImageRecord.model_validate_json(record).parameters())
        await self._upload(image_id, image.data, settings, metadata)

    async def upload_record(self, image_id: str, record: bytes) -> None:
        settings = ContentSettings(
            content_type="application/json",
            cache_control=RECORD_CACHE_CONTROL,
            content_md5=bytearray(hashlib.md5(record).digest()),
        )
        await self._upload(f"{image_id}.json", record, settings, None)

    async def _put_direct(self, name: str, data: bytes, content_type: str, cache_control: str) -> None:
        settings = ContentSettings(
            content_type=content_type,
            cache_control=cache_control,
            content_md5=bytearray(hashlib.md5(data).digest()),
        )
        try:
            with anyio.fail_after(self.deadline):
                await self._upload(name, data, settings, None)
        except Exception as exc:
            raise StorageUnavailable(f"cannot reach image storage ({describe_error(exc)})") from exc

    async def _upload(
        self, name: str, data: bytes, settings: ContentSettings, metadata: dict[str, str] | None
    ) -> None:
        """Put one blob and verify it. The service refuses a body whose MD5 differs from the one we
        send (Md5Mismatch); then the stored blob's size and MD5 must be ours. Creates the container
        once if it has gone missing (where allowed)."""
        blob = self.container.get_blob_client(name)
        for attempt in (1, 2):
            try:
                await blob.upload_blob(data, overwrite=True, content_settings=settings, metadata=metadata)
                break
            except ResourceNotFoundError as exc:
                if getattr(exc, "error_code", None) != "ContainerNotFound" or attempt == 2:
                    raise
                if not await self.account.ensure_container(self.container_name):
                    raise HttpResponseError(
                        f"Blob container {self.container_name!r} does not exist in account "
                        f"{self.account.name}: create it (the deployment template does)"
                    ) from exc
        properties = await blob.get_blob_properties()
        stored_md5 = properties.content_settings.content_md5
        sent_md5 = bytes(settings.content_md5 or b"")
        if properties.size != len(data) or (stored_md5 and bytes(stored_md5) != sent_md5):
            raise HttpResponseError(
                f"upload of {name} did not verify: {properties.size} bytes stored of {len(data)}"
            )

    async def _probe(self) -> None:
        """The cheapest read that shows the account answers (a missing container is an answer)."""
        with contextlib.suppress(ResourceNotFoundError):
            await self.container.get_container_properties()

    async def _download(self, name: str) -> tuple[bytes, str] | None:
        """A blob's bytes and content type; None when it (or its container) does not exist. Gives up
        after the deadline: a hung account fails the read fast (StorageUnavailable)."""
        try:
            with anyio.fail_after(self.deadline):
                downloader = await self.container.download_blob(name)
                data = await downloader.readall()
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            if is_outage(exc):
                self.uploader.unreachable(exc)
                message = (
                    f"image storage is unreachable right now ({describe_error(exc)}); try again in a minute"
                )
            else:  # e.g. a role assignment missing: the operator must act
                log.error("Blob storage refused to read %s: %s", name, describe_error(exc))
                message = (
                    f"image storage refused the request ({describe_error(exc)}); tell the server's operator"
                )
            raise StorageUnavailable(message) from exc
        self.uploader.reached_storage()
        content_type = downloader.properties.content_settings.content_type or "application/octet-stream"
        return data, content_type


def open_blob_store(settings: Settings) -> BlobImageStore:
    started = time.perf_counter()
    account = BlobAccount.from_settings(settings)
    container = settings.blob_images_container
    spool = Spool(settings.spool_dir)
    store = BlobImageStore(account, spool, container, settings.sas_minutes, settings.storage_deadline_seconds)
    log.info(
        "images in Azure Blob Storage: account %s, container %r (%s; spool %s; %.2f s)",
        account.name,
        settings.blob_images_container,
        "connection string" if account.create_containers else "DefaultAzureCredential",
        settings.spool_dir,
        time.perf_counter() - started,
    )
    return store

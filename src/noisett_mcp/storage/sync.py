"""Mirror a prefix of a Blob container into a local folder: model weights into MODEL_CACHE_DIR at start
(`NOISETT_MODEL=blob://CONTAINER/PREFIX`), and the styles container into the styles folder, checked
again by ETag so that an uploaded style appears without a restart.

A file is downloaded only when it is missing locally or its size or ETag changed; the ETags of the
files a sync wrote are kept beside the folder, in `.<folder>.noisett-sync.json` (not in it, where a
style catalog would see it). Files the sync did not write are never touched; files it wrote whose
blob has gone are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob.aio import ContainerClient

from noisett_mcp.config import BLOB_MODEL_SCHEME, Settings
from noisett_mcp.storage.azure_account import BlobAccount, describe_error
from noisett_mcp.storage.local import atomic_write

log = logging.getLogger(__name__)


@dataclass
class SyncResult:
    downloaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # name: why; kept for the next sync

    @property
    def changed(self) -> bool:
        return bool(self.downloaded or self.removed)


def parse_blob_model(model: str) -> tuple[str, str]:
    """`blob://CONTAINER/PREFIX` → (container, prefix with a trailing slash)."""
    rest = model.removeprefix(BLOB_MODEL_SCHEME)
    container, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not container or not prefix or _safe_relative(prefix) is None:
        raise ValueError(
            f"NOISETT_MODEL={model!r}: a Blob model is `blob://CONTAINER/PREFIX`, "
            "e.g. `blob://models/HiDream-I1-Fast`"
        )
    return container, prefix + "/"


def _safe_relative(name: str) -> PurePosixPath | None:
    """A blob name as a path inside the folder, or None for one that could escape it."""
    path = PurePosixPath(name)
    if not name or "\\" in name or "\0" in name or path.is_absolute():
        return None
    if any(part in ("", ".", "..") for part in name.split("/")):
        return None
    return path


async def sync_prefix(
    container: ContainerClient,
    prefix: str,
    folder: Path,
    *,
    describe: Callable[[BaseException], str] = str,
    last_suffixes: tuple[str, ...] = (),
    concurrency: int = 4,
) -> SyncResult:
    """Make `folder` hold the blobs under `prefix` (their names relative to it). Files ending in
    `last_suffixes` (manifests) are written after all the others, so that a reader who finds a new
    manifest also finds what it names. A file that fails to download is reported in `failed` and the
    others go on; a failure to list raises."""
    folder = Path(folder)
    state_path = folder.parent / f".{folder.name}.noisett-sync.json"
    state: dict[str, dict[str, Any]] = await anyio.to_thread.run_sync(_read_state, state_path)
    result = SyncResult()
    wanted: dict[str, Any] = {}
    async for blob in container.list_blobs(name_starts_with=prefix or None):
        if blob.name.endswith("/"):
            continue  # a folder placeholder
        safe = _safe_relative(blob.name[len(prefix) :])
        if safe is None:
            log.warning("skipping blob %r: its name would leave %s", blob.name, folder)
            continue
        wanted[str(safe)] = blob
    limiter = anyio.CapacityLimiter(concurrency)

    async def fetch(relative: str, blob: Any) -> None:
        try:
            async with limiter:
                await _download(container, blob, folder / relative)
        except Exception as exc:
            result.failed[relative] = describe(exc)
            return
        state[relative] = {"etag": _etag(blob.etag), "size": blob.size}
        result.downloaded.append(relative)
        await anyio.to_thread.run_sync(_write_state, state_path, dict(state))  # progress survives a crash

    stale = {}
    for relative, blob in wanted.items():
        known = state.get(relative, {})
        if known.get("etag") == _etag(blob.etag) and await _size(folder / relative) == blob.size:
            result.unchanged += 1
        else:
            stale[relative] = blob
    for wave in (False, True):
        async with anyio.create_task_group() as tg:
            for relative, blob in stale.items():
                if relative.endswith(last_suffixes) == wave:
                    tg.start_soon(fetch, relative, blob)
    for relative in sorted(set(state) - set(wanted)):
        await anyio.to_thread.run_sync(_remove, folder / relative)
        del state[relative]
        result.removed.append(relative)
    if result.changed:
        await anyio.to_thread.run_sync(_write_state, state_path, state)
    for relative, why in result.failed.items():
        log.error("could not sync %s%s to %s: %s", prefix, relative, folder, why)
    return result


async def sync_model(account: BlobAccount, settings: Settings) -> Path:
    """Sync `blob://CONTAINER/PREFIX` to `<MODEL_CACHE_DIR>/blob/CONTAINER/PREFIX` and return that
    folder, ready for `from_pretrained`."""
    container_name, prefix = parse_blob_model(settings.model)
    folder = settings.resolved_model_cache_dir / "blob" / container_name / prefix.rstrip("/")
    try:
        result = await sync_prefix(
            account.container(container_name),
            prefix,
            folder,
            describe=describe_error,
            last_suffixes=("model_index.json",),  # diffusers' entry point, written last
        )
    except ResourceNotFoundError as exc:
        raise FileNotFoundError(
            f"{settings.model}: Blob container {container_name!r} does not exist"
        ) from exc
    if result.failed:
        raise OSError(f"{settings.model}: {len(result.failed)} file(s) failed to download; see the log")
    if not result.downloaded and not result.unchanged:
        raise FileNotFoundError(f"{settings.model}: no files under that prefix in Blob storage")
    log.info(
        "model %s synced to %s: %d file(s) downloaded, %d unchanged, %d removed",
        settings.model,
        folder,
        len(result.downloaded),
        result.unchanged,
        len(result.removed),
    )
    return folder


async def sync_styles(account: BlobAccount, settings: Settings) -> SyncResult:
    """Mirror the styles container into the styles folder. A missing container is created where
    allowed, else reported: either way there is nothing to sync yet."""
    container = settings.blob_styles_container
    try:
        result = await sync_prefix(
            account.container(container),
            "",
            settings.resolved_styles_dir,
            describe=describe_error,
            last_suffixes=(".toml",),  # a style's manifest appears once its weights are in place
        )
    except ResourceNotFoundError:
        if not await account.ensure_container(container):
            log.warning("Blob container %r (styles) does not exist in account %s", container, account.name)
        return SyncResult()
    if result.changed:
        log.info(
            "styles synced from Blob container %r: %d file(s) downloaded, %d removed",
            container,
            len(result.downloaded),
            len(result.removed),
        )
    return result


async def keep_styles_synced(account: BlobAccount, settings: Settings) -> None:
    """Sync the styles every NOISETT_STYLES_SYNC_SECONDS, for the process's lifetime."""
    while True:
        try:
            await sync_styles(account, settings)
        except Exception as exc:  # storage away: keep the styles we have, try again later
            log.warning("styles sync failed: %s", describe_error(exc))
        await anyio.sleep(settings.styles_sync_seconds)


async def _download(container: ContainerClient, blob: Any, path: Path) -> None:
    """Stream a blob to a temporary file beside `path`, check its size (and MD5 where the blob has
    one), then rename it into place: a reader never sees a partial file."""
    await anyio.to_thread.run_sync(lambda: path.parent.mkdir(parents=True, exist_ok=True))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    expected_md5 = blob.content_settings.content_md5
    md5 = hashlib.md5() if expected_md5 else None
    size = 0
    try:
        with os.fdopen(fd, "wb") as file:
            # If-Match: the blob listed is the blob downloaded, or the download fails and is retried later.
            downloader = await container.download_blob(
                blob.name, etag=blob.etag, match_condition=MatchConditions.IfNotModified
            )
            async for chunk in downloader.chunks():
                size += len(chunk)
                if md5 is not None:
                    md5.update(chunk)
                await anyio.to_thread.run_sync(file.write, chunk)
        if size != blob.size or (md5 is not None and md5.digest() != bytes(expected_md5)):
            raise OSError(f"download of {blob.name} did not verify ({size} of {blob.size} bytes)")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _etag(value: str | None) -> str:
    return (value or "").strip('"')


async def _size(path: Path) -> int | None:
    try:
        return (await anyio.to_thread.run_sync(path.stat)).st_size
    except FileNotFoundError:
        return None


def _read_state(path: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads(path.read_text())["files"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return {}  # no state (or a damaged one): every file is checked by downloading


def _write_state(path: Path, state: dict[str, dict[str, Any]]) -> None:
    atomic_write(path, json.dumps({"files": state}, indent=1, sort_keys=True).encode())


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)

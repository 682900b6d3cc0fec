"""The files of a diffusers pipeline, in a local folder or under a Blob prefix (`blob://CONTAINER/PREFIX`),
as the streaming loader (`engine/streaming.py`) reads them: small files first, into a folder that
`from_pretrained` can read for configs and tokenizers; then each safetensors shard by parallel ranged reads.

Torch-free, and the Azure SDK is imported only for a Blob model (a GPU benchmark reads a folder without
it). Synchronous: it runs on the engine thread, with the Blob SDK's sync client (its own
connection pool, signed in as the rest of storage is: the connection string, else the account URL with
DefaultAzureCredential). Every request is bounded by NOISETT_STORAGE_DEADLINE_SECONDS and retried twice.

With MODEL_CACHE_DIR set, what was read from Blob is kept there (with the ETags, in the same layout and
state file as `storage/sync.py`), so a restart of the same replica reads its disk instead of Blob.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from noisett_mcp import __version__
from noisett_mcp.config import Settings
from noisett_mcp.errors import ModelLoadFailed, needs_azure_storage
from noisett_mcp.storage.local import atomic_write

log = logging.getLogger(__name__)

WEIGHTS_SUFFIX = ".safetensors"
CHUNK_BYTES = 32 * 2**20  # one ranged read
READERS = 8  # ranged reads in flight at once
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit

OnBytes = Callable[[int], None]


@dataclass(frozen=True)
class WeightsSource:
    """Where the model's weights come from, in plain values (the engine reads this, never `Settings`)."""

    model: str  # a local folder, a hub id, `demo`, or `blob://CONTAINER/PREFIX`
    blob_model: bool
    cache_dir: Path | None  # where Blob reads are kept with their ETags; None: no cache
    data_dir: Path  # without a cache, Blob's small files go under data_dir/model-files
    storage_deadline_seconds: float
    connection_string: SecretStr | None = None  # Azure storage: the connection string, else the account URL
    account_url: str | None = None

    @property
    def blob_enabled(self) -> bool:
        return bool(self.connection_string or self.account_url)

    @classmethod
    def from_settings(cls, settings: Settings) -> WeightsSource:
        return cls(
            model=settings.model,
            blob_model=settings.blob_model,
            cache_dir=settings.resolved_model_cache_dir if settings.model_cache_dir is not None else None,
            data_dir=settings.data_dir,
            storage_deadline_seconds=settings.storage_deadline_seconds,
            connection_string=settings.azure_storage_connection_string,
            account_url=settings.blob_account_url,
        )


@dataclass(frozen=True)
class ModelFile:
    relative: str
    size: int
    etag: str = ""


@dataclass(frozen=True)
class ShardHeader:
    """A checked safetensors header: where the data starts, and each tensor's dtype, shape and offsets."""

    data_start: int
    tensors: dict[str, dict[str, Any]]


class ModelFiles:
    """A local folder of pipeline files (the base for Blob, below)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder  # where configs and tokenizers are read from
        self.location = str(folder)
        self.files = self._list()

    def _list(self) -> dict[str, ModelFile]:
        found = sorted(p for p in self.folder.rglob("*") if p.is_file())
        return {
            rel: ModelFile(rel, p.stat().st_size)
            for p in found
            if not (rel := p.relative_to(self.folder).as_posix()).startswith(".")
        }

    def where(self, relative: str) -> str:
        return f"{self.location.rstrip('/')}/{relative}"

    def local_path(self, relative: str) -> Path | None:
        """The file on local disk, where it is there (mapped by safetensors, never copied)."""
        return self.folder / relative

    def read_range(self, relative: str, start: int, length: int) -> bytes:
        with (self.folder / relative).open("rb") as file:
            file.seek(start)
            return file.read(length)

    def read_into(self, relative: str, start: int, buffer: memoryview, on_bytes: OnBytes) -> None:
        raise NotImplementedError  # local shards are mapped (local_path), not read

    def fetch_small(self, on_bytes: OnBytes) -> None:
        """Configs and tokenizers are already in the folder: count them as read."""
        on_bytes(sum(f.size for f in self.files.values() if not f.relative.endswith(WEIGHTS_SUFFIX)))

    def keep(self, relative: str, buffer: memoryview) -> None:
        """Nothing to cache for a local folder."""

    def close(self) -> None:
        pass

    def check_pipeline(self) -> None:
        """Refuse a location that holds no diffusers pipeline, listing what is there."""
        if "model_index.json" in self.files:
            return
        found = sorted({rel.split("/")[0] for rel in self.files})
        listing = ", ".join(found[:20]) + (f" and {len(found) - 20} more" if len(found) > 20 else "")
        raise ModelLoadFailed(
            f"{self.location} holds no diffusers pipeline (no model_index.json); found: "
            f"{listing or 'nothing'}. Point NOISETT_MODEL at the folder or prefix that holds "
            "model_index.json, or write one there with `noisett-mcp model prepare`"
        )

    def shard_header(self, relative: str) -> ShardHeader:
        """Read and check a shard's header against the file's size: a clear error names the file when it
        is truncated or its header is damaged, before any tensor is placed."""
        size, where = self.files[relative].size, self.where(relative)
        if size < 8:
            raise ModelLoadFailed(f"{where} is truncated: {size} bytes, not even a safetensors header")
        (header_len,) = struct.unpack("<Q", self.read_range(relative, 0, 8))
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise ModelLoadFailed(
                f"{where} has a corrupt safetensors header: it claims {header_len} header bytes in a "
                f"{size}-byte file. Upload the file again"
            )
        try:
            header = json.loads(self.read_range(relative, 8, header_len))
            header.pop("__metadata__", None)
            end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ModelLoadFailed(
                f"{where} has a corrupt safetensors header ({type(exc).__name__}: {exc}). Upload it again"
            ) from exc
        if 8 + header_len + end > size:
            raise ModelLoadFailed(
                f"{where} is truncated: it holds {size} bytes, its header describes {8 + header_len + end}. "
                "Upload the file again"
            )
        return ShardHeader(8 + header_len, header)


class BlobModelFiles(ModelFiles):
    """A pipeline under `blob://CONTAINER/PREFIX`."""

    def __init__(self, source: WeightsSource) -> None:
        from noisett_mcp.storage import sync

        self._sync = sync  # its helpers: the blob name rules, the ETag state file
        self.source = source
        self.container_name, self.prefix = sync.parse_blob_model(source.model)
        self.location = source.model
        self.caching = source.cache_dir is not None
        base = source.cache_dir if source.cache_dir is not None else source.data_dir / "model-files"
        self.folder = base / "blob" / self.container_name / self.prefix.rstrip("/")
        self._state_path = self.folder.parent / f".{self.folder.name}.noisett-sync.json"
        self._state: dict[str, dict[str, Any]] = sync._read_state(self._state_path) if self.caching else {}
        self._client = _container_client(source, self.container_name)
        self.files = self._guarded("list the model's files", self._list_blobs)

    def _list_blobs(self) -> dict[str, ModelFile]:
        files = {}
        for blob in self._client.list_blobs(name_starts_with=self.prefix):
            relative = blob.name[len(self.prefix) :]
            if self._sync._safe_relative(relative) is not None:
                files[relative] = ModelFile(relative, blob.size, self._sync._etag(blob.etag))
        return files

    def check_pipeline(self) -> None:
        if self.files:
            super().check_pipeline()
            return
        near = self._guarded("list the container", self._top_level_names)
        raise ModelLoadFailed(
            f"{self.location}: nothing under that prefix in Blob container {self.container_name!r}; it "
            f"holds: {', '.join(near) or 'nothing'}. Upload a pipeline with `noisett-mcp model prepare`"
        )

    def _top_level_names(self) -> list[str]:
        return sorted({blob.name.split("/")[0] + "/" for blob in self._client.list_blobs()})[:20]

    def local_path(self, relative: str) -> Path | None:
        """The cached copy, where one with the blob's ETag and size is on disk."""
        path = self.folder / relative
        known, wanted = self._state.get(relative, {}), self.files[relative]
        fresh = self.caching and known.get("etag") == wanted.etag and path.is_file()
        return path if fresh and path.stat().st_size == wanted.size else None

    def read_range(self, relative: str, start: int, length: int) -> bytes:
        local = self.local_path(relative)
        if local is not None:
            return super().read_range(relative, start, length)
        blob = self._client.get_blob_client(self.prefix + relative)
        return self._guarded(
            f"read {self.where(relative)}",
            lambda: blob.download_blob(
                offset=start, length=length, etag=self.files[relative].etag, match_condition=_if_unchanged()
            ).readall(),
        )

    def read_into(self, relative: str, start: int, buffer: memoryview, on_bytes: OnBytes) -> None:
        """Fill `buffer` from the blob, from `start` on, by READERS ranged reads at once."""
        chunks = [(at, min(CHUNK_BYTES, len(buffer) - at)) for at in range(0, len(buffer), CHUNK_BYTES)]

        def fetch(chunk: tuple[int, int]) -> None:
            at, length = chunk
            data = self.read_range(relative, start + at, length)
            if len(data) != length:
                raise ModelLoadFailed(
                    f"{self.where(relative)} is truncated: a read at byte {start + at} returned "
                    f"{len(data)} of {length} bytes"
                )
            buffer[at : at + length] = data
            on_bytes(length)

        with ThreadPoolExecutor(READERS, thread_name_prefix="noisett-blob") as pool:
            list(pool.map(fetch, chunks))

    def fetch_small(self, on_bytes: OnBytes) -> None:
        """Every file but the weights into the folder (configs and tokenizers: the pipeline's frame)."""
        small = [rel for rel in self.files if not rel.endswith(WEIGHTS_SUFFIX)]

        def fetch(relative: str) -> None:
            if self.local_path(relative) is None:
                data = self.read_range(relative, 0, self.files[relative].size)
                atomic_write(self.folder / relative, data)
                self._remember(relative)
            on_bytes(self.files[relative].size)

        with ThreadPoolExecutor(READERS, thread_name_prefix="noisett-blob") as pool:
            list(pool.map(fetch, small))

    def keep(self, relative: str, buffer: memoryview) -> None:
        """Write a shard read from Blob into the cache, so that the next start reads it from disk."""
        if self.caching and self.local_path(relative) is None:
            atomic_write(self.folder / relative, buffer)  # type: ignore[arg-type]
            self._remember(relative)

    def _remember(self, relative: str) -> None:
        if self.caching:
            wanted = self.files[relative]
            self._state[relative] = {"etag": wanted.etag, "size": wanted.size}
            self._sync._write_state(self._state_path, dict(self._state))

    def close(self) -> None:
        self._client.close()

    def _guarded(self, what: str, call: Callable[[], Any]) -> Any:
        """`call()`, its storage failure turned into one line that names the model and what was read."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        from noisett_mcp.storage.azure_account import describe_error

        try:
            return call()
        except ResourceNotFoundError as exc:
            raise ModelLoadFailed(
                f"could not {what}: it is not in Blob storage ({describe_error(exc)})"
            ) from exc
        except AzureError as exc:
            status = getattr(exc, "status_code", None)  # set when storage answered: busy, throttled, failing
            deadline = self.source.storage_deadline_seconds
            why = f"answered HTTP {status}" if status else f"failed or did not answer within {deadline:g} s"
            raise ModelLoadFailed(
                f"could not {what}: Blob storage {why}, three tries ({describe_error(exc)}). The next "
                "request tries the load again"
            ) from exc


def open_model_files(source: WeightsSource, folder: Path | None = None) -> ModelFiles:
    """The model's files: under its Blob prefix, or in `folder` (a local pipeline)."""
    if source.blob_model:
        if not source.blob_enabled:
            raise ModelLoadFailed(needs_azure_storage(f"NOISETT_MODEL={source.model}"))
        return BlobModelFiles(source)
    return ModelFiles(folder if folder is not None else Path(source.model))


def _if_unchanged() -> Any:
    from azure.core import MatchConditions

    return MatchConditions.IfNotModified


def _container_client(source: WeightsSource, container: str) -> Any:
    """A sync container client, with the storage deadline on every request and two quick retries."""
    from azure.storage.blob import BlobServiceClient, LinearRetry

    deadline = source.storage_deadline_seconds
    options: dict[str, Any] = {
        "retry_policy": LinearRetry(backoff=1, retry_total=2, random_jitter_range=1),
        "connection_timeout": deadline,
        "read_timeout": deadline,
        "user_agent": f"noisett-mcp/{__version__}",
    }
    if source.connection_string is not None:
        secret = source.connection_string.get_secret_value()
        service = BlobServiceClient.from_connection_string(secret, **options)
    else:
        from azure.identity import DefaultAzureCredential

        service = BlobServiceClient(str(source.account_url), DefaultAzureCredential(), **options)
    return service.get_container_client(container)

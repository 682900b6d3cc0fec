"""Where images and their records live. One interface, `ImageStore`; the local folder is the default."""

from __future__ import annotations

from noisett_mcp.config import Settings
from noisett_mcp.storage.base import ImageRecord, ImageStore, JobControl, StoredImage, check_image_id
from noisett_mcp.storage.local import LocalImageStore

__all__ = [
    "ImageRecord",
    "ImageStore",
    "JobControl",
    "LocalImageStore",
    "StoredImage",
    "check_image_id",
    "open_store",
]

AZURE_EXTRA_MISSING = (
    "Azure Blob Storage is configured (AZURE_STORAGE_CONNECTION_STRING or NOISETT_BLOB_ACCOUNT_URL) but "
    "the Azure libraries are not installed: pip install 'noisett-mcp[azure]'"
)


def open_store(settings: Settings) -> ImageStore:
    """The store the settings ask for: Azure Blob when a connection string or an account URL is set,
    else the local folder. The Azure SDK is imported only then (it costs about 0.6 s at start)."""
    if not settings.blob_enabled:
        return LocalImageStore(settings.images_dir)
    try:
        from noisett_mcp.storage.blob import open_blob_store
    except ImportError as exc:
        raise RuntimeError(AZURE_EXTRA_MISSING) from exc
    return open_blob_store(settings)

"""Where images and their records live. One interface, `ImageStore`; the local folder is the default."""

from __future__ import annotations

from noisett_mcp.config import Settings
from noisett_mcp.storage.base import ImageStore, InvalidImageId, StoredImage
from noisett_mcp.storage.local import LocalImageStore

__all__ = ["ImageStore", "InvalidImageId", "LocalImageStore", "StoredImage", "open_store"]


def open_store(settings: Settings) -> ImageStore:
    """The store the settings ask for."""
    return LocalImageStore(settings.images_dir)

"""Put a new style into Blob storage's styles container, which every replica mirrors into its styles
folder (storage/sync.py): the weights and preview first, the manifest last, so that a replica that finds
the manifest also finds what it names."""

from __future__ import annotations

from pathlib import Path

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from noisett_mcp.config import Settings
from noisett_mcp.storage.azure_account import BlobAccount


async def style_in_blob(settings: Settings, name: str) -> bool:
    """Whether the styles container already holds a manifest or weights of this name."""
    account = BlobAccount.from_settings(settings)
    try:
        container = account.container(settings.blob_styles_container)
        for blob in (f"{name}.toml", f"{name}.safetensors"):
            try:
                await container.get_blob_client(blob).get_blob_properties()
                return True
            except ResourceNotFoundError:
                continue
        return False
    finally:
        await account.aclose()


async def upload_style(settings: Settings, files: list[Path]) -> list[str]:
    """Upload `files` (the manifest, NAME.toml, last) without overwriting anything; return the blob names."""
    account = BlobAccount.from_settings(settings)
    ordered = sorted(files, key=lambda path: path.suffix == ".toml")
    try:
        await account.ensure_container(settings.blob_styles_container)
        container = account.container(settings.blob_styles_container)
        for path in ordered:
            with path.open("rb") as data:
                try:
                    await container.upload_blob(path.name, data, overwrite=False)
                except ResourceExistsError as exc:
                    raise FileExistsError(
                        f"{path.name} is already in the Blob container {settings.blob_styles_container!r}"
                    ) from exc
        return [path.name for path in ordered]
    finally:
        await account.aclose()

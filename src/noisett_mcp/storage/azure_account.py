"""An Azure Storage account, as the Blob store and the model and style syncs reach it: the async service
client and its credential, read-only SAS links, and what a storage failure means.

The account is reached with a connection string (account key: service SAS links) or an account URL and
DefaultAzureCredential (a managed identity: user delegation SAS links, the delegation key cached).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import anyio
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobSasPermissions, UserDelegationKey, generate_blob_sas
from azure.storage.blob.aio import BlobServiceClient, ContainerClient, LinearRetry

from noisett_mcp import __version__
from noisett_mcp.config import Settings
from noisett_mcp.errors import needs_azure_storage

log = logging.getLogger(__name__)

_SECRETS = re.compile(r"(?i)\b(sig|accountkey|sharedaccesssignature|skoid|sktid|skt|ske|sks|skv)=[^&;\s\"']+")


def describe_error(exc: BaseException) -> str:
    """One line about a storage failure, fit for logs and users: never a key or a SAS signature."""
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    lines = str(exc).strip().splitlines()
    parts = [type(exc).__name__, str(status) if status else "", str(code) if code else ""]
    text = " ".join(p for p in parts if p) + (f": {lines[0]}" if lines else "")
    return _SECRETS.sub(r"\1=REDACTED", text)[:300]


def is_outage(exc: BaseException) -> bool:
    """Storage unreachable or failing as a whole (retry later), rather than refusing one request."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError | OSError | TimeoutError):
        return True
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        return status is None or status >= 500 or status in (408, 429)
    return False


class BlobAccount:
    """One storage account: the async service client, its credential, and SAS signing."""

    def __init__(
        self, client: BlobServiceClient, *, token_credential: Any = None, create_containers: bool = False
    ) -> None:
        self.client = client
        self.token_credential = token_credential
        self.create_containers = create_containers
        self._account_key: str | None = getattr(client.credential, "account_key", None)
        self._delegation_key: UserDelegationKey | None = None
        self._delegation_key_expiry = datetime.min.replace(tzinfo=UTC)
        self._delegation_lock = anyio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, credential: Any = None, **client_options: Any) -> BlobAccount:
        """From the connection string, or from the account URL with `credential` (default:
        DefaultAzureCredential, which takes a managed identity from AZURE_CLIENT_ID)."""
        options: dict[str, Any] = {
            # Two quick retries inside a request (the SDK's default waits 15 s and more between them):
            # writes fall back to the spool, whose uploader retries for as long as it takes.
            "retry_policy": LinearRetry(backoff=1, retry_total=2, random_jitter_range=1),
            "connection_timeout": 10,
            "user_agent": f"noisett-mcp/{__version__}",
            **client_options,
        }
        if settings.azure_storage_connection_string is not None:
            client = BlobServiceClient.from_connection_string(
                settings.azure_storage_connection_string.get_secret_value(), **options
            )
            return cls(client, create_containers=True)
        if not settings.blob_account_url:
            raise ValueError(needs_azure_storage("Blob storage"))
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = DefaultAzureCredential()
        client = BlobServiceClient(settings.blob_account_url, credential=credential, **options)
        return cls(client, token_credential=credential)

    @property
    def name(self) -> str:
        return self.client.account_name or "?"

    def container(self, name: str) -> ContainerClient:
        return self.client.get_container_client(name)

    async def ensure_container(self, name: str) -> bool:
        """Create a missing container where allowed (with a connection string); True if it exists now."""
        if not self.create_containers:
            return False
        try:
            await self.container(name).create_container()
            log.info("created Blob container %r in account %s", name, self.name)
        except ResourceExistsError:
            pass
        return True

    async def sas_url(self, container: str, blob: str, minutes: float) -> str | None:
        """A read-only link to one blob for `minutes`: a service SAS with an account key, a user
        delegation SAS with a token credential; None when the account has neither."""
        expiry = datetime.now(UTC) + timedelta(minutes=minutes)
        signing: dict[str, Any]
        if self._account_key:
            signing = {"account_key": self._account_key}
        elif self.token_credential is not None:
            signing = {"user_delegation_key": await self._user_delegation_key(expiry)}
        else:
            return None
        url = self.client.get_blob_client(container, blob).url
        token = generate_blob_sas(
            self.name,
            container,
            blob,
            permission=BlobSasPermissions(read=True),
            expiry=expiry,
            protocol="https" if urlparse(url).scheme == "https" else None,
            **signing,
        )
        return f"{url}?{token}"

    async def _user_delegation_key(self, needed_until: datetime) -> UserDelegationKey:
        """One key for many links: fetched for a day (or the link's lifetime, up to Azure's 7 days) and
        refreshed when a new link would outlive it."""
        async with self._delegation_lock:
            if self._delegation_key is None or self._delegation_key_expiry < needed_until:
                now = datetime.now(UTC)
                expiry = min(max(needed_until, now + timedelta(days=1)), now + timedelta(days=7))
                self._delegation_key = await self.client.get_user_delegation_key(
                    now - timedelta(minutes=5),
                    expiry,  # a little back: clocks differ
                )
                self._delegation_key_expiry = expiry
            return self._delegation_key

    async def aclose(self) -> None:
        await self.client.close()
        if self.token_credential is not None and hasattr(self.token_credential, "close"):
            await self.token_credential.close()

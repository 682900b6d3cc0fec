"""What the fault tests share: two (or more) signed Entra users on one HTTP endpoint."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.azurite import Azurite, blob_settings
from tests.jwks import JwksServer, SigningKey, Tenant

TENANT = Tenant(str(uuid.uuid4()), str(uuid.uuid4()))


def auth_overrides(jwks: JwksServer) -> dict[str, Any]:
    return {
        "azure_ad_tenant_id": TENANT.tenant_id,
        "azure_ad_client_id": TENANT.client_id,
        "auth_jwks_url": jwks.url,
    }


def split_front_overrides(azurite: Azurite, jwks: JwksServer, max_queue_per_user: int) -> dict[str, Any]:
    """A signed front on Azurite's blobs and a queue of its own (NOISETT_QUEUE=azure), with room for 8
    jobs: no worker takes them, so they stay queued."""
    return {
        **blob_settings(azurite),
        **auth_overrides(jwks),
        "queue": "azure",
        "queue_name": f"jobs-{uuid.uuid4().hex[:8]}",
        "max_queue": 8,
        "max_queue_per_user": max_queue_per_user,
    }


class User:
    """One signed-in person: a token of their own, and their owner id as records store it."""

    def __init__(self, key: SigningKey, tenant: Tenant = TENANT, **claims: Any) -> None:
        self.oid = str(uuid.uuid4())
        self.token = key.sign(tenant.v2_claims(oid=self.oid, **claims))
        self.owner = f"{tenant.tenant_id}/{self.oid}".lower()

    @asynccontextmanager
    async def session(self, base: str) -> AsyncIterator[Client]:
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {self.token}"}) as http,
            Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
        ):
            yield client


class Fifos:
    """Makes FIFOs, and a watchdog: past `deadline` seconds it keeps opening each one for writing, which
    releases any reader stuck on it (the code before the fix blocked there, in a thread no cancel
    reaches), so that a hang fails the test instead of hanging the run."""

    def __init__(self, deadline: float) -> None:
        self.made: list[Path] = []
        self.fired = False
        self._done = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, args=(deadline,), daemon=True)
        self._watchdog.start()

    def make(self, path: Path) -> Path:
        os.mkfifo(path)
        self.made.append(path)
        return path

    def _watch(self, deadline: float) -> None:
        if self._done.wait(deadline):
            return
        while not self._done.wait(0.1):
            for path in self.made:
                with contextlib.suppress(OSError):  # ENXIO: no reader waits on it
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                    self.fired = True

    def stop(self) -> None:
        self._done.set()
        self._watchdog.join()

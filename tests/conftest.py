from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from noisett_mcp.config import Settings
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from tests.azurite import Azurite, running_azurite, skip_without_azurite
from tests.jwks import JwksServer, SigningKey


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """A test that runs the CLI in-process points the root logger at the stderr that pytest captures for
    that test only; later tests would log into the closed stream ("Logging error"). Hand the root logger
    back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite's Blob service for the session; each test uses containers of its own (tests/azurite.py:
    `blob_settings`). Skipped where Azurite is not installed, except in CI. For queues, start
    `running_azurite(("blob", "queue"))`: the queue service costs another 3 s to start."""
    skip_without_azurite()
    with running_azurite() as instance:
        yield instance


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole run: the demo pipeline is written once and loaded by every test."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def make_settings(tmp_path: Path, model_cache: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model": "demo",
            "data_dir": tmp_path / "data",
            "model_cache_dir": model_cache,
            "preload": False,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Noisett]:
    async with Noisett(settings) as running:
        yield running


@pytest.fixture
async def client(service: Noisett) -> AsyncIterator[Client]:
    """A real MCP client session, in memory, on a running service with the demo model."""
    async with Client(build_server(service)) as session:
        yield session


@pytest.fixture(scope="session")
def key() -> SigningKey:
    """Entra's signing key (tests/jwks.py), for every test that signs tokens."""
    return SigningKey()


@pytest.fixture
def jwks(key: SigningKey) -> Iterator[JwksServer]:
    """Entra's JWKS endpoint publishing `key`, over real HTTP on 127.0.0.1."""
    with JwksServer(key).running() as server:
        yield server

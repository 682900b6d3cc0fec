from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.common import Fifos
from tests.jwks import JwksServer, SigningKey


@pytest.fixture(scope="session")
def key() -> SigningKey:
    """Entra's signing key, for the tests that sign in two users."""
    return SigningKey()


@pytest.fixture
def jwks(key: SigningKey) -> Iterator[JwksServer]:
    with JwksServer(key).running() as server:
        yield server


@pytest.fixture
def fifos() -> Iterator[Fifos]:
    made = Fifos(deadline=20)
    yield made
    made.stop()

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.common import Fifos


@pytest.fixture
def fifos() -> Iterator[Fifos]:
    made = Fifos(deadline=20)
    yield made
    made.stop()

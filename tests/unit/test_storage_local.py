"""The local store: records typed, a job's control record apart from the image records."""

from __future__ import annotations

from pathlib import Path

import pytest

from noisett_mcp.errors import InvalidImageId
from noisett_mcp.storage import JobControl, LocalImageStore
from tests.support import sample_record

pytestmark = pytest.mark.anyio


async def test_a_record_round_trips_typed(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    record = sample_record("a" * 32, seed=9)
    await store.save_record(record)
    assert await store.load_record("a" * 32) == record
    assert await store.load_record("b" * 32) is None


async def test_a_job_id_is_not_an_image_id(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    await store.save_control("c" * 32, JobControl(cancel=True))
    assert await store.load_record("c" * 32) is None, "control records live apart from image records"
    assert await store.load_control("c" * 32) == JobControl(cancel=True)


async def test_a_malformed_id_never_reaches_a_path(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    for bad in ("../etc/passwd", "A" * 32, "0" * 31 + "/"):
        with pytest.raises(InvalidImageId, match="32 lowercase hexadecimal"):
            await store.load_record(bad)
        with pytest.raises(InvalidImageId):
            await store.save_control(bad, JobControl())
    assert list(tmp_path.iterdir()) == []

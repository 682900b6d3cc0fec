"""Judging an unfinished image whose job runs elsewhere: alive while its owner's heartbeat is fresh,
failed (and stored so) once that process has stopped."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from noisett_mcp.jobs.records import PROCESS_ID, image_record
from noisett_mcp.replicas import judge_elsewhere, stopped_because
from noisett_mcp.storage.base import ImageRecord
from noisett_mcp.storage.local import LocalImageStore
from tests.unit.test_jobs_local import make_job

pytestmark = pytest.mark.anyio

ANOTHER_REPLICA = "another-host:1:abcd"


def running_record(worker: str | None, seconds_ago: float | None) -> ImageRecord:
    record = image_record(make_job(), 0)
    beat = None
    if seconds_ago is not None:
        beat = (datetime.now(UTC) - timedelta(seconds=seconds_ago)).isoformat(timespec="seconds")
    return record.model_copy(update={"status": "running", "worker": worker, "heartbeat_at": beat})


def test_a_fresh_heartbeat_from_another_replica_is_alive() -> None:
    assert stopped_because(running_record(ANOTHER_REPLICA, 5), timeout=60) is None


def test_a_stale_or_missing_heartbeat_means_the_server_stopped() -> None:
    for seconds_ago in (120, None):
        reason = stopped_because(running_record(ANOTHER_REPLICA, seconds_ago), timeout=60)
        assert reason is not None and "no sign of life for over 60 s" in reason


def test_a_restart_of_this_host_is_told_at_once_whatever_the_heartbeat() -> None:
    before_restart = f"{socket.gethostname()}:{os.getpid()}:00000000"
    assert before_restart != PROCESS_ID
    reason = stopped_because(running_record(before_restart, 1), timeout=60)
    assert reason == "interrupted by a server restart; generate it again"


async def test_a_dead_owners_record_is_rewritten_as_failed(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    record = running_record(ANOTHER_REPLICA, 600)
    await store.save_record(record)
    info = await judge_elsewhere(store, record, timeout=60)
    assert info.status == "failed" and info.error is not None and "generate it again" in info.error
    stored = await store.load_record(record.id)
    assert stored is not None and stored.status == "failed" and stored.error == info.error


async def test_a_live_owners_record_is_left_as_it_is(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    record = running_record(ANOTHER_REPLICA, 1)
    await store.save_record(record)
    assert (await judge_elsewhere(store, record, timeout=60)).status == "running"
    stored = await store.load_record(record.id)
    assert stored is not None and stored.status == "running"

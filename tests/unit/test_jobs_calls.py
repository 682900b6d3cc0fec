"""Calls in flight, found by (caller, request id) for a client's cancel: on one replica in memory, and
across fronts through a pointer in the store (a real local store, a real queue that runs nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from noisett_mcp.jobs.calls import Calls, call_key
from noisett_mcp.jobs.local import LocalJobQueue
from noisett_mcp.storage.base import JobControl
from noisett_mcp.storage.local import LocalImageStore
from tests.unit.test_jobs_local import make_job

pytestmark = pytest.mark.anyio


class DurableQueue(LocalJobQueue):
    """The local queue, told that its jobs outlive the process (as the Azure front's do)."""

    durable = True


def test_a_call_key_is_the_caller_and_the_request_id() -> None:
    key = call_key("tenant/alice", 5)
    assert len(key) == 32 and int(key, 16) >= 0  # fits the store's control records
    assert key == call_key("tenant/alice", "5")  # the SDK hands the id over as text
    assert key != call_key("tenant/bob", 5) and key != call_key("tenant/alice", 6)


async def test_only_the_callers_own_call_is_cancelled(tmp_path: Path) -> None:
    queue = LocalJobQueue(runner=None, max_queue=5)  # type: ignore[arg-type]  # nothing runs here
    calls = Calls(queue, LocalImageStore(tmp_path))
    job = make_job()
    async with calls.track("alice", 7, job):
        assert not await calls.cancel("bob", 7) and not await calls.cancel("alice", 8)
        assert not job.cancel_requested
        assert await calls.cancel("alice", 7)
        assert job.cancel_requested
    assert not await calls.cancel("alice", 7)  # the request is over


async def test_two_calls_under_one_key_are_left_alone(tmp_path: Path) -> None:
    queue = LocalJobQueue(runner=None, max_queue=5)  # type: ignore[arg-type]
    calls = Calls(queue, LocalImageStore(tmp_path))
    first, second = make_job(), make_job()
    async with calls.track("alice", 1, first), calls.track("alice", 1, second):
        assert not await calls.cancel("alice", 1)
    assert not first.cancel_requested and not second.cancel_requested


async def test_another_front_finds_the_job_through_the_pointer(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    here = Calls(DurableQueue(runner=None, max_queue=5), store)  # type: ignore[arg-type]
    there = Calls(DurableQueue(runner=None, max_queue=5), store)  # type: ignore[arg-type]
    job = make_job()
    async with here.track("alice", 3, job):
        assert not await there.cancel("bob", 3)
        assert await store.load_control(job.id) is None
        assert await there.cancel("alice", 3)
        assert await store.load_control(job.id) == JobControl(cancel=True)  # what the worker watches
    await store.save_control(job.id, JobControl())
    assert not await there.cancel("alice", 3)  # over: the pointer is cleared
    assert await store.load_control(job.id) == JobControl()

"""Which job an MCP request started, so that the client's `notifications/cancelled` stops it wherever it
arrives. Over stdio the SDK cancels the request itself. Over stateless HTTP the notification comes in a
POST of its own, on a fresh transport that does not know the request, and the SDK drops it: http.py
hands it here instead.

A call is known by its caller's owner id together with the JSON-RPC id its client chose. Clients choose
ids freely, and they collide across clients, so a cancel matches on both: a cancel from anyone else
names another call and changes nothing.

On one replica the calls in flight are in memory. With the front and the GPU workers apart (a durable
queue), the cancel may reach another front replica, so each call also leaves a pointer in the store,
under a hash of (owner, request id), to its job: any front follows it to the job's control record,
which the worker watches.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from noisett_mcp.errors import StorageUnavailable
from noisett_mcp.jobs.base import Job, JobQueue
from noisett_mcp.storage.base import ImageStore, JobControl

log = logging.getLogger(__name__)

RequestId = str | int
POINTER_DEADLINE_SECONDS = 5.0


def call_key(owner: str, request_id: RequestId) -> str:
    """A call's key: 32 hex characters, like a job id, so that it fits the store's control records. The
    id is taken as text, as the SDK's `Context.request_id` gives it (`1` and `"1"` are one call)."""
    return hashlib.sha256(json.dumps([owner, str(request_id)]).encode()).hexdigest()[:32]


class Calls:
    """The generate_image calls in flight, by (owner, request id)."""

    def __init__(self, queue: JobQueue, store: ImageStore) -> None:
        self.queue = queue
        self.store = store
        self._live: dict[str, list[Job]] = {}

    @asynccontextmanager
    async def track(self, owner: str, request_id: RequestId, job: Job) -> AsyncIterator[None]:
        """While the caller waits on `job`, a cancel for (owner, request id) stops it."""
        key = call_key(owner, request_id)
        self._live.setdefault(key, []).append(job)
        shared = self.queue.durable  # fronts apart from the workers: tell the other fronts too
        if shared:
            await self._point(key, job.id)
        try:
            yield
        finally:
            jobs = self._live[key]
            jobs.remove(job)
            if not jobs:
                del self._live[key]
            if shared:  # the request is over: a late cancel must not reach the job
                with anyio.CancelScope(shield=True):  # also when the client went away
                    await self._point(key, None)

    async def cancel(self, owner: str, request_id: RequestId) -> bool:
        """Stop the job of the caller's call with this id at its next step; False if none is known.
        Two calls in flight under one key (one user's two clients chose the same id) are ambiguous:
        neither is cancelled, rather than maybe the wrong one."""
        key = call_key(owner, request_id)
        jobs = self._live.get(key, [])
        if len(jobs) > 1:
            log.warning(
                "cancel for request %r matches %d calls of one caller: ignored", request_id, len(jobs)
            )
            return False
        if jobs:
            await self.queue.cancel(jobs[0])
            return True
        if not self.queue.durable:
            return False
        pointer = await self.store.load_control(key)
        if pointer is None or pointer.job_id is None:
            return False
        await self.store.save_control(pointer.job_id, JobControl(cancel=True))
        return True

    async def _point(self, key: str, job_id: str | None) -> None:
        """Write a call's pointer. Storage that is away costs only the cancel from other fronts: the
        call itself goes on."""
        with anyio.move_on_after(POINTER_DEADLINE_SECONDS):
            try:
                await self.store.save_control(key, JobControl(job_id=job_id))
            except StorageUnavailable as exc:
                log.warning("call pointer not written (a cancel via another front cannot find it): %s", exc)

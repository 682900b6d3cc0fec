"""The front's background loops, run in the service's task group for its lifetime: the retention sweep,
the heartbeat of this process's unfinished jobs, and the style sync from Azure storage."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import anyio
from anyio.abc import TaskGroup

from noisett_mcp.config import Settings
from noisett_mcp.errors import first_line
from noisett_mcp.jobs.base import Job
from noisett_mcp.jobs.records import save_records
from noisett_mcp.storage.base import ImageStore

log = logging.getLogger(__name__)

RETENTION_SWEEP_SECONDS = 3600.0


def start(
    task_group: TaskGroup,
    settings: Settings,
    store: ImageStore,
    live_jobs: Callable[[], Iterable[Job]],
    *,
    heartbeats: bool,
) -> None:
    """Start every loop. `heartbeats` is False on a front whose GPU workers write their own."""
    task_group.start_soon(sweep_images, store, settings.retention_days)
    if heartbeats:
        task_group.start_soon(heartbeat, store, live_jobs, settings.heartbeat_seconds)
    if (account := store.account) is not None:
        from noisett_mcp.storage.sync import keep_styles_synced

        task_group.start_soon(keep_styles_synced, account, settings)


async def sweep_images(store: ImageStore, days: float) -> None:
    """Delete stored images older than NOISETT_RETENTION_DAYS: at start, then every hour."""
    while days > 0:
        try:
            removed = await store.sweep(days)
        except Exception as exc:
            log.warning("retention sweep failed: %s", first_line(exc))
        else:
            if removed:
                log.info("retention: deleted %d image(s) older than %g days", removed, days)
        await anyio.sleep(RETENTION_SWEEP_SECONDS)


async def heartbeat(store: ImageStore, live_jobs: Callable[[], Iterable[Job]], seconds: float) -> None:
    """Rewrite the records of this process's unfinished jobs every NOISETT_HEARTBEAT_SECONDS: another
    replica reading them knows the job is alive here (and sees its progress)."""
    while True:
        await anyio.sleep(seconds)
        for job in live_jobs():
            if not job.finished:
                try:
                    await save_records(store, job)
                except Exception as exc:  # the next beat tries again
                    log.warning("heartbeat of job %s failed: %s", job.id, first_line(exc))

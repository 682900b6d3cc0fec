"""Judging an image whose job runs in another process: alive on another replica while its owner's
heartbeat is fresh; otherwise that process died, and the record is rewritten to say so (else it would
say `running` forever)."""

from __future__ import annotations

import logging

from noisett_mcp.errors import first_line
from noisett_mcp.jobs.records import heartbeat_age, process_gone
from noisett_mcp.schemas import ImageInfo
from noisett_mcp.storage.base import ImageRecord, ImageStore

log = logging.getLogger(__name__)


def stopped_because(record: ImageRecord, timeout: float) -> str | None:
    """Why the process making an unfinished image has stopped, or None while it looks alive."""
    if process_gone(record.worker):
        return "interrupted by a server restart; generate it again"
    age = heartbeat_age(record)
    if age is None or age > timeout:
        return f"the server making it stopped (no sign of life for over {timeout:g} s); generate it again"
    return None


async def judge_elsewhere(store: ImageStore, record: ImageRecord, timeout: float) -> ImageInfo:
    """Where an unfinished image made elsewhere stands; a dead owner's record is marked failed."""
    error = stopped_because(record, timeout)
    if error is None:
        return record.info()  # alive elsewhere: that replica has the live progress
    failed = record.model_copy(update={"status": "failed", "error": error})
    try:
        await store.save_record(failed)
    except Exception as exc:  # the answer stands; the next reader tries again
        log.warning("could not mark image %s failed: %s", record.id, first_line(exc))
    return failed.info()

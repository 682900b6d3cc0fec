"""Finding 3: two replicas on one storage account disagreed about a running image. Replica 1 is a real
`noisett-mcp serve` process; replica 2 is a service in this process on the same Blob container. While
replica 1 runs the job, replica 2 reports it running, with progress; once replica 1 stops (frozen, then
killed with SIGKILL) its heartbeat stops, replica 2 reports the image failed and rewrites the record."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client

from noisett_mcp.config import Settings
from noisett_mcp.service import Noisett
from tests.azurite import Azurite, blob_settings
from tests.support import child_env, poll_until, served_process

pytestmark = [pytest.mark.anyio, pytest.mark.faults, pytest.mark.slow]

TIMEOUT = 4.0  # NOISETT_HEARTBEAT_TIMEOUT_SECONDS on replica 2; replica 1 beats every second


async def test_a_second_replica_tells_running_elsewhere_from_a_dead_process(
    azurite: Azurite, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    shared = blob_settings(azurite)
    first = make_settings(**shared, data_dir=tmp_path / "replica-1")
    env = child_env(
        first,
        AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string,
        NOISETT_BLOB_IMAGES_CONTAINER=shared["blob_images_container"],
        NOISETT_BLOB_STYLES_CONTAINER=shared["blob_styles_container"],
        NOISETT_HEARTBEAT_SECONDS="1",
    )
    second = make_settings(**shared, data_dir=tmp_path / "replica-2", heartbeat_timeout_seconds=TIMEOUT)
    async with (
        served_process(env, tmp_path / "replica-1.log") as (process, base),
        Client(f"{base}/mcp") as client,
        Noisett(second) as replica_2,
    ):
        made = await client.call_tool(
            "generate_image", {"prompt": "a long one", "steps": 100, "count": 4, "wait": False}
        )
        assert not made.is_error, made.content
        image_id = made.structured_content["images"][0]["id"]

        async def running_with_progress_on_replica_2() -> bool:
            view = await replica_2.view(image_id)
            assert view.info.status in ("queued", "running"), view.info.error
            return view.info.status == "running" and view.info.progress > 0

        await poll_until(running_with_progress_on_replica_2, timeout=120, interval=0.5)
        # Longer than the timeout: the heartbeat keeps replica 2 from calling it dead.
        for _ in range(int(TIMEOUT * 2)):
            await poll_until(running_with_progress_on_replica_2, timeout=5, interval=0.5)
            await anyio.sleep(1)

        process.send_signal(signal.SIGSTOP)  # alive, but silent: only the heartbeat can tell
        try:

            async def failed_on_replica_2() -> bool:
                return (await replica_2.view(image_id)).info.status == "failed"

            await poll_until(failed_on_replica_2, timeout=TIMEOUT + 20, interval=0.5)
        finally:
            process.send_signal(signal.SIGKILL)  # kill -9: it never writes another record
            process.wait()
        view = await replica_2.view(image_id)
        assert "no sign of life" in (view.info.error or ""), view.info.error
        await poll_until(lambda: not replica_2.store.spool.pending_now(), timeout=30)  # type: ignore[attr-defined]

    # The record itself now says so, for every replica, from Blob storage.
    async with Noisett(make_settings(**shared, data_dir=tmp_path / "replica-3")) as replica_3:
        record = await replica_3.store.load_record(image_id)
        assert record is not None and record.status == "failed", record

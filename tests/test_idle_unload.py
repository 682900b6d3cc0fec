"""NOISETT_IDLE_UNLOAD_SECONDS frees the model after that long without a job; the next job loads it again
and reports the load as its progress. A GPU worker polls its queue quickly after a job and backs off
while idle."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mcp import Client

from noisett_mcp.config import Settings
from noisett_mcp.gpu.worker import FAST_POLL_SECONDS, SLOW_POLL_SECONDS, idle_poll_delay
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from tests.support import poll_until

pytestmark = pytest.mark.anyio


async def test_an_idle_model_is_unloaded_and_the_next_request_loads_it_again_with_progress(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(idle_unload_seconds=0.4)
    async with Noisett(settings) as service, Client(build_server(service)) as client:
        first = await client.call_tool("generate_image", {"prompt": "before", "steps": 2})
        assert not first.is_error, first.content
        first_load = service.runner.load_stages
        await poll_until(lambda: service.runner.engine_state == "unloaded", timeout=30)
        health = service.health().body()
        assert health["status"] == "ready" and health["model_loaded"] is False
        again = await client.call_tool("generate_image", {"prompt": "after", "steps": 2})
        assert not again.is_error, again.content
        assert service.runner.engine_state == "ready"
        # A second load, with its own stages (a waiting call's progress shows them: test_model_streaming).
        assert service.runner.load_stages is not first_load
        stages = [stage["name"] for stage in service.health().body()["load"]["stages"]]
        assert stages[0] == "imports" and stages[-1] == "ready"


def test_a_worker_polls_fast_after_a_job_and_backs_off_while_idle() -> None:
    assert idle_poll_delay(0) == idle_poll_delay(29) == FAST_POLL_SECONDS
    waits = [idle_poll_delay(seconds) for seconds in range(30, 200, 10)]
    assert waits == sorted(waits) and waits[0] > FAST_POLL_SECONDS and waits[-1] == SLOW_POLL_SECONDS

"""Issue 22, finding 2: in the split layout one user's concurrent requests raced past the per-user cap
(30 of 30 accepted against a cap of 4), because the front counted its followed jobs after an await and
added each one only after the send. An Azurite-backed front on real HTTP, two signed users: however many
requests arrive at once, exactly the cap is accepted, the rest get the per-user message, and another
user still gets in."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult

from noisett_mcp.config import Settings
from noisett_mcp.http import create_app
from noisett_mcp.jobs.azure import AzureJobQueue
from noisett_mcp.service import Noisett
from tests.azurite import running_azurite, skip_without_azurite
from tests.faults.common import User, split_front_overrides
from tests.jwks import JwksServer, SigningKey
from tests.support import serve_asgi

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

CAP = 3
AT_ONCE = 30
LONG = {"prompt": "one of many at once", "steps": 100, "count": 4, "wait": False}


async def test_concurrent_requests_of_one_user_get_exactly_the_cap(
    make_settings: Callable[..., Settings], key: SigningKey, jwks: JwksServer
) -> None:
    skip_without_azurite()
    a, b = User(key), User(key)
    with running_azurite(("blob", "queue")) as azurite:
        service = Noisett(make_settings(**split_front_overrides(azurite, jwks, max_queue_per_user=CAP)))
        async with serve_asgi(create_app(service)) as base, a.session(base) as alice, b.session(base) as bob:
            answers: list[CallToolResult] = []

            async def send() -> None:
                answers.append(await alice.call_tool("generate_image", LONG))

            async with anyio.create_task_group() as tg:
                for _ in range(AT_ONCE):
                    tg.start_soon(send)

            accepted = [r for r in answers if not r.is_error]
            refused = [r.content[0].text for r in answers if r.is_error]
            assert len(accepted) == CAP, f"{len(accepted)} of {AT_ONCE} accepted against a cap of {CAP}"
            assert len(refused) == AT_ONCE - CAP
            assert all(f"NOISETT_MAX_QUEUE_PER_USER={CAP}" in text for text in refused), set(refused)
            assert isinstance(service.queue, AzureJobQueue)
            queued = await service.queue.client.get_queue_properties()
            assert queued.approximate_message_count == CAP

            mine = await bob.call_tool("generate_image", LONG)
            assert not mine.is_error, mine.content


async def test_concurrent_requests_of_many_users_never_pass_the_queue_cap(
    make_settings: Callable[..., Settings], key: SigningKey, jwks: JwksServer
) -> None:
    skip_without_azurite()
    users = [User(key) for _ in range(AT_ONCE // CAP)]
    with running_azurite(("blob", "queue")) as azurite:
        service = Noisett(make_settings(**split_front_overrides(azurite, jwks, max_queue_per_user=CAP)))
        max_queue = service.settings.max_queue
        async with serve_asgi(create_app(service)) as base, AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(user.session(base)) for user in users]
            answers: list[CallToolResult] = []

            async def send(session: Client) -> None:
                answers.append(await session.call_tool("generate_image", LONG))

            async with anyio.create_task_group() as tg:
                for session in sessions:
                    for _ in range(CAP):  # each user stays within their own cap
                        tg.start_soon(send, session)
            assert isinstance(service.queue, AzureJobQueue)
            queued = (await service.queue.client.get_queue_properties()).approximate_message_count

    # Asserted with the sessions closed, so that a failure reads plainly.
    accepted = [r for r in answers if not r.is_error]
    refused = [r.content[0].text for r in answers if r.is_error]
    assert 0 < len(accepted) <= max_queue, f"{len(accepted)} of {AT_ONCE} accepted, max {max_queue}"
    assert all("The image server is busy" in text for text in refused), set(refused)
    assert queued == len(accepted)

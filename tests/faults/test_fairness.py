"""Finding 5: one user could lock everyone out. Two signed users on one HTTP endpoint: A fills the
queue; A meets the per-user limit, B still gets in and runs next, and only A (or an operator) can
cancel A's jobs, by any of their image ids."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from noisett_mcp.config import Settings
from noisett_mcp.http import create_app
from noisett_mcp.service import Noisett
from tests.azurite import running_azurite, skip_without_azurite
from tests.faults.common import User, auth_overrides, split_front_overrides
from tests.jwks import JwksServer, SigningKey
from tests.support import poll_until, serve_asgi

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

LONG = {"prompt": "hogs the GPU", "steps": 100, "count": 4, "wait": False}


@pytest.fixture
def fair_settings(make_settings: Callable[..., Settings], jwks: JwksServer) -> Settings:
    return make_settings(
        **auth_overrides(jwks), max_queue=8, max_queue_per_user=3, cancel_roles="Noisett.Operator"
    )


async def test_a_queue_hog_meets_its_limit_and_the_other_user_runs_next(
    fair_settings: Settings, key: SigningKey
) -> None:
    a, b = User(key), User(key)
    service = Noisett(fair_settings)
    async with serve_asgi(create_app(service)) as base, a.session(base) as alice, b.session(base) as bob:
        await service.runner.engine()
        first = await alice.call_tool("generate_image", LONG)
        await poll_until(lambda: service.queue.running is not None, timeout=60)
        for _ in range(3):
            assert not (await alice.call_tool("generate_image", LONG)).is_error
        refused = await alice.call_tool("generate_image", LONG)
        assert refused.is_error
        text = refused.content[0].text
        assert "3 generation(s) waiting" in text and "NOISETT_MAX_QUEUE_PER_USER=3" in text, text

        mine = await bob.call_tool("generate_image", {"prompt": "just one", "steps": 2, "wait": False})
        assert not mine.is_error, mine.content
        bob_image = mine.structured_content["images"][0]["id"]
        got = await bob.call_tool("get_image", {"image_id": bob_image})
        assert got.structured_content["queue_position"] == 1, "only A's running job is ahead of B's"
        assert service.queue.waiting[0].owner == b.owner

        # B cannot cancel A's job, and is told exactly what an unknown id gets.
        a_image = first.structured_content["images"][1]["id"]
        foreign = await bob.call_tool("cancel_image", {"image_id": a_image})
        unknown_id = uuid.uuid4().hex
        unknown = await bob.call_tool("cancel_image", {"image_id": unknown_id})
        assert foreign.is_error and unknown.is_error
        assert foreign.content[0].text.replace(a_image, "X") == unknown.content[0].text.replace(
            unknown_id, "X"
        )
        assert service.queue.running is not None and not service.queue.running.cancel_requested

        # A cancels the running job by its second image's id: B's job runs next, before A's others.
        stopped = await alice.call_tool("cancel_image", {"image_id": a_image})
        assert not stopped.is_error and stopped.structured_content["cancelled"] is True, stopped.content

        async def bob_done() -> bool:
            view = await service.view(bob_image, b.owner)
            return view.info.status == "done"

        await poll_until(bob_done, timeout=60)
        assert sum(job.owner == a.owner for job in service.queue.waiting) >= 2, "A's jobs waited"
        for image in first.structured_content["images"]:
            gone = await alice.call_tool("get_image", {"image_id": image["id"]})
            assert gone.is_error and "cancelled" in gone.content[0].text

        # A queued job is cancelled by its owner, or by an operator.
        queued = [job for job in service.queue.waiting if job.owner == a.owner]
        own = await alice.call_tool("cancel_image", {"image_id": queued[0].image_ids[0]})
        assert own.structured_content["cancelled"] is True
        operator = User(key, roles=["Noisett.Operator"])
        async with operator.session(base) as admin:
            other = await admin.call_tool("cancel_image", {"image_id": queued[1].image_ids[3]})
        assert other.structured_content["cancelled"] is True, other.content
        assert service.queue.depth == 0
        await alice.call_tool("cancel_image", {"image_id": service.queue.running.image_ids[0]})
        await poll_until(lambda: service.queue.running is None and service.queue.depth == 0, timeout=60)


async def test_in_the_split_layout_the_front_enforces_the_per_user_limit(
    make_settings: Callable[..., Settings], key: SigningKey, jwks: JwksServer
) -> None:
    skip_without_azurite()
    a, b = User(key), User(key)
    with running_azurite(("blob", "queue")) as azurite:
        service = Noisett(make_settings(**split_front_overrides(azurite, jwks, max_queue_per_user=2)))
        async with serve_asgi(create_app(service)) as base, a.session(base) as alice, b.session(base) as bob:
            for _ in range(2):
                assert not (await alice.call_tool("generate_image", LONG)).is_error
            refused = await alice.call_tool("generate_image", LONG)
            assert refused.is_error and "NOISETT_MAX_QUEUE_PER_USER=2" in refused.content[0].text
            mine = await bob.call_tool("generate_image", LONG)
            assert not mine.is_error, mine.content
            # Cancelled on the front, the job's control record tells the worker that would take it.
            image_id = mine.structured_content["images"][2]["id"]
            stopping = await bob.call_tool("cancel_image", {"image_id": image_id})
            assert not stopping.is_error and "next denoising step" in stopping.content[0].text
            job_id = (await service.store.load_record(image_id)).job_id
            assert (await service.store.load_control(job_id)).cancel is True

"""Issue 22, finding 1: a cancel role from another tenant read and cancelled tenant A's work. Two tenants'
signed users on one HTTP endpoint: an operator role acts within its own tenant only (unless
NOISETT_CANCEL_ROLES_SCOPE=all), an id it may not touch answers exactly as an unknown one, and
cancel_image answers with the job's state only: never a prompt, a parameter or a link."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable

import pytest
from mcp import Client
from mcp.types import CallToolResult

from noisett_mcp.config import Settings
from noisett_mcp.http import create_app
from noisett_mcp.service import Noisett
from tests.faults.common import TENANT, User, auth_overrides
from tests.jwks import JwksServer, SigningKey, Tenant
from tests.support import poll_until, serve_asgi

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

OTHER_TENANT = Tenant(str(uuid.uuid4()), TENANT.client_id)  # a second tenant of the same app
OPERATOR = "Noisett.Operator"
SECRET_PROMPT = "tenant A's confidential harbour plan"
STATE_FIELDS = {"image_id", "status", "cancelled", "message"}
_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def two_tenants(make_settings: Callable[..., Settings], jwks: JwksServer) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        return make_settings(
            **auth_overrides(jwks), auth_tenants=OTHER_TENANT.tenant_id, cancel_roles=OPERATOR, **overrides
        )

    return make


async def _finished_image(client: Client) -> str:
    made = await client.call_tool("generate_image", {"prompt": SECRET_PROMPT, "steps": 1})
    assert not made.is_error, made.content
    return str(made.structured_content["images"][0]["id"])


def _blank(result: CallToolResult) -> str:
    return _ID.sub("ID", result.content[0].text)


def _leaks_nothing(result: CallToolResult) -> None:
    """The answer is the job's state: no prompt, no parameters, no link."""
    assert set(result.structured_content) == STATE_FIELDS, result.structured_content
    wire = json.dumps(result.model_dump(mode="json"))
    assert SECRET_PROMPT not in wire and "http" not in wire and "file:" not in wire, wire


async def test_an_operator_of_another_tenant_cannot_see_or_cancel_the_work(
    two_tenants: Callable[..., Settings], key: SigningKey
) -> None:
    alice = User(key)
    outsider = User(key, OTHER_TENANT, roles=[OPERATOR])
    insider = User(key, roles=[OPERATOR])
    service = Noisett(two_tenants())
    async with (
        serve_asgi(create_app(service)) as base,
        alice.session(base) as as_alice,
        outsider.session(base) as as_outsider,
    ):
        done_id = await _finished_image(as_alice)
        long = await as_alice.call_tool(
            "generate_image", {"prompt": SECRET_PROMPT, "steps": 100, "wait": False}
        )
        running_id = long.structured_content["images"][0]["id"]
        await poll_until(lambda: service.queue.running is not None, timeout=60)

        unknown = await as_outsider.call_tool("cancel_image", {"image_id": uuid.uuid4().hex})
        looked_up = await as_outsider.call_tool("get_image", {"image_id": done_id})
        for image_id in (done_id, running_id):
            foreign = await as_outsider.call_tool("cancel_image", {"image_id": image_id})
            assert foreign.is_error, foreign.content
            assert _blank(foreign) == _blank(unknown)
            assert foreign.structured_content is None
        assert looked_up.is_error
        assert _blank(looked_up) == _blank(unknown).replace("cancel_image", "get_image")
        running = service.queue.running
        assert running is not None and not running.cancel_requested, "the outsider's cancel reached the job"

        # An operator of A's own tenant may stop it, and is told the job's state only.
        async with insider.session(base) as as_insider:
            stopped = await as_insider.call_tool("cancel_image", {"image_id": running_id})
            kept = await as_insider.call_tool("cancel_image", {"image_id": done_id})
        assert not stopped.is_error, stopped.content
        assert stopped.structured_content["cancelled"] is True
        assert stopped.structured_content["status"] == "cancelled"
        _leaks_nothing(stopped)
        assert not kept.is_error and kept.structured_content["status"] == "done"
        _leaks_nothing(kept)

        # The owner gets the same shape: one answer for everyone.
        own = await as_alice.call_tool("cancel_image", {"image_id": done_id})
        assert not own.is_error and own.structured_content["image_id"] == done_id
        _leaks_nothing(own)


async def test_with_scope_all_an_operator_crosses_tenants_but_still_reads_only_the_state(
    two_tenants: Callable[..., Settings], key: SigningKey
) -> None:
    alice = User(key)
    outsider = User(key, OTHER_TENANT, roles=[OPERATOR])
    bystander = User(key, OTHER_TENANT)  # no role: only their own
    service = Noisett(two_tenants(cancel_roles_scope="all"))
    async with (
        serve_asgi(create_app(service)) as base,
        alice.session(base) as as_alice,
        outsider.session(base) as as_outsider,
        bystander.session(base) as as_bystander,
    ):
        done_id = await _finished_image(as_alice)
        assert (await as_bystander.call_tool("cancel_image", {"image_id": done_id})).is_error
        crossed = await as_outsider.call_tool("cancel_image", {"image_id": done_id})
        assert not crossed.is_error, crossed.content
        assert crossed.structured_content["status"] == "done"
        _leaks_nothing(crossed)

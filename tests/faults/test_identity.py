"""Identity edge cases on the real HTTP app (issue 14, finding 7): tokens signed by a local Entra stand-in
(tests/jwks.py) that verify but name nobody, and the RFC 9728 metadata behind a proxy that rewrites Host."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest

from noisett_mcp.config import Settings
from noisett_mcp.http import create_app
from noisett_mcp.service import Noisett
from tests.jwks import JwksServer, SigningKey, Tenant
from tests.support import serve_asgi
from tests.test_auth import challenge, post_mcp, session

pytestmark = pytest.mark.anyio

TENANT = Tenant(str(uuid.uuid4()), str(uuid.uuid4()))
METADATA = "/.well-known/oauth-protected-resource/mcp"
PUBLIC = "https://noisett.contoso.example"


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[str, Noisett]]:
    service = Noisett(settings)
    async with serve_asgi(create_app(service)) as base:
        yield base, service


@pytest.fixture
def auth(make_settings: Any, jwks: JwksServer) -> Any:
    def make(**overrides: Any) -> Settings:
        return make_settings(
            azure_ad_tenant_id=TENANT.tenant_id,
            azure_ad_client_id=TENANT.client_id,
            auth_jwks_url=jwks.url,
            **overrides,
        )

    return make


def app_only(**overrides: Any) -> dict[str, Any]:
    """A client-credentials token: an app role instead of `scp`, `idtyp: app`, the client in `azp`."""
    claims = TENANT.v2_claims(roles=["Images.Generate"], idtyp="app", azp=str(uuid.uuid4()))
    del claims["scp"]
    return claims | overrides


@pytest.mark.parametrize(
    "case",
    ["empty oid", "blank oid", "no oid", "oid not a guid", "v1 empty oid", "app-only without oid or client"],
)
async def test_a_token_that_names_nobody_gets_a_401_that_says_why(
    auth: Any, key: SigningKey, case: str
) -> None:
    claims = {
        "empty oid": TENANT.v2_claims(oid=""),
        "blank oid": TENANT.v2_claims(oid="   "),
        "no oid": {k: v for k, v in TENANT.v2_claims().items() if k != "oid"},
        "oid not a guid": TENANT.v2_claims(oid="local"),
        "v1 empty oid": TENANT.v1_claims(oid=""),
        "app-only without oid or client": {k: v for k, v in app_only(oid="", azp="").items() if k != "oid"},
    }[case]
    async with serving(auth(auth_allowed_roles="Images.Generate")) as (base, _):
        response = await post_mcp(base, key.sign(claims))
        assert response.status_code == 401, f"{case}: {response.status_code} {response.text[:200]}"
        params = challenge(response)
        assert params["error"] == "invalid_token"
        assert "object id (oid)" in params["error_description"] or "client id" in params["error_description"]
        assert response.json()["error_description"] == params["error_description"]
        # The same server still serves a token that names its user.
        assert (await post_mcp(base, key.sign(TENANT.v2_claims()))).status_code == 200


async def test_an_app_only_token_without_an_oid_is_owned_by_its_client_app(
    auth: Any, key: SigningKey
) -> None:
    claims = {k: v for k, v in app_only().items() if k != "oid"}
    async with serving(auth(auth_allowed_roles="Images.Generate")) as (base, service):
        async with session(base, key.sign(claims)) as client:
            arguments = {"prompt": "a lighthouse", "steps": 1, "wait": False}
            result = await client.call_tool("generate_image", arguments)
            assert not result.is_error, result.content[0].text
            image_id = result.structured_content["images"][0]["id"]
        record = await service.store.load_record(image_id)
        assert record is not None and record.owner == f"{TENANT.tenant_id}/app:{claims['azp']}"


async def test_the_metadata_uses_the_public_url_when_set_and_varies_on_host_when_not(auth: Any) -> None:
    spoofed = {"Host": "attacker.example", "X-Forwarded-Proto": "http"}
    async with serving(auth(public_url=PUBLIC + "/")) as (base, _), httpx2.AsyncClient() as http:
        response = await http.get(base + METADATA, headers=spoofed)
        assert response.json()["resource"] == f"{PUBLIC}/mcp"
        assert "max-age=3600" in response.headers["cache-control"]
        denied = await post_mcp(base, None, **spoofed)
        assert challenge(denied)["resource_metadata"] == f"{PUBLIC}{METADATA}"

    async with serving(auth()) as (base, _), httpx2.AsyncClient() as http:
        response = await http.get(base + METADATA, headers=spoofed)
        assert response.json()["resource"] == "http://attacker.example/mcp"  # as asked, but…
        vary = {v.strip().lower() for v in response.headers.get("vary", "").split(",")}
        assert {"host", "x-forwarded-proto"} <= vary, response.headers  # …never cached for another Host
        max_age = int(response.headers["cache-control"].split("max-age=")[1].split(",")[0])
        assert max_age <= 300, response.headers["cache-control"]


def test_the_public_url_must_be_an_origin(make_settings: Any) -> None:
    assert make_settings(public_url="HTTPS://Noisett.Example/").public_url == "https://noisett.example"
    for bad in ("noisett.example", "https://noisett.example/mcp", "ftp://x.example", "https://x.example?a=1"):
        with pytest.raises(ValueError, match="NOISETT_PUBLIC_URL"):
            make_settings(public_url=bad)

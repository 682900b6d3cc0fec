"""Microsoft Entra ID on the HTTP endpoint, over real HTTP: tokens signed with local RSA keys, the JWKS
served from 127.0.0.1, the SDK's client for sessions and plain httpx2 for status codes and headers."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from noisett_mcp.config import Settings
from noisett_mcp.http import create_app
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from tests.jwks import JwksServer, SigningKey, Tenant, hs256_with_public_key, tampered, unsigned
from tests.support import serve_asgi

pytestmark = pytest.mark.anyio

TENANT = Tenant(str(uuid.uuid4()), str(uuid.uuid4()))
OTHER_TENANT = Tenant(str(uuid.uuid4()), TENANT.client_id)  # another tenant, same app registration
SCOPE = f"api://{TENANT.client_id}/access_as_user"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}

Endpoint = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture(scope="module")
def foreign_key() -> SigningKey:
    """A key Entra never published: an attacker's."""
    return SigningKey()


@pytest.fixture
def auth_settings(make_settings: Callable[..., Settings], jwks: JwksServer) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values = {
            "azure_ad_tenant_id": TENANT.tenant_id,
            "azure_ad_client_id": TENANT.client_id,
            "auth_jwks_url": jwks.url,
        }
        return make_settings(**(values | overrides))

    return make


@pytest.fixture
def start(auth_settings: Callable[..., Settings]) -> Endpoint:
    """Starts the HTTP app with auth on (plus any settings given) and yields its base URL."""

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[str]:
        async with serve_asgi(create_app(Noisett(auth_settings(**overrides)))) as base:  # runs the service
            yield base

    return run


@pytest.fixture
async def base(start: Endpoint) -> AsyncIterator[str]:
    async with start() as url:
        yield url


@asynccontextmanager
async def session(base: str, token: str) -> AsyncIterator[Client]:
    """The SDK's client over streamable HTTP, sending the token as a bearer token."""
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
    ):
        yield client


async def post_mcp(base: str, token: str | None = None, **headers: str) -> httpx2.Response:
    """An `initialize` POST to /mcp, as a client's first request."""
    sent = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient() as http:
        return await http.post(f"{base}/mcp", json=INITIALIZE, headers=sent | headers)


def challenge(response: httpx2.Response) -> dict[str, str]:
    """The parameters of a `WWW-Authenticate: Bearer ...` header."""
    header = response.headers["www-authenticate"]
    assert header.startswith("Bearer ")
    params = {}
    for part in header.removeprefix("Bearer ").split('", '):
        name, _, value = part.partition("=")
        params[name.strip()] = value.strip().strip('"')
    return params


# --- accepted tokens ---


@pytest.mark.parametrize("version", ["v2", "v1"])
async def test_valid_tokens_reach_the_tools(base: str, key: SigningKey, version: str) -> None:
    claims = TENANT.v2_claims() if version == "v2" else TENANT.v1_claims()
    async with session(base, key.sign(claims)) as client:
        tools = await client.list_tools()
        names = {tool.name for tool in tools.tools}
        assert names == {"generate_image", "list_styles", "get_image", "cancel_image"}
        styles = await client.call_tool("list_styles", {})
        assert not styles.is_error


async def test_clock_skew_within_the_leeway_is_accepted(base: str, key: SigningKey) -> None:
    now = TENANT.v2_claims()["iat"]
    assert (await post_mcp(base, key.sign(TENANT.v2_claims(exp=now - 20)))).status_code == 200
    assert (await post_mcp(base, key.sign(TENANT.v2_claims(nbf=now + 20)))).status_code == 200


async def test_extra_audiences_and_tenants_are_accepted(start: Endpoint, key: SigningKey) -> None:
    extra = "https://noisett.contoso.com/mcp"
    async with start(auth_audiences=extra, auth_tenants=OTHER_TENANT.tenant_id) as base:
        assert (await post_mcp(base, key.sign(TENANT.v1_claims(aud=extra)))).status_code == 200
        assert (await post_mcp(base, key.sign(OTHER_TENANT.v2_claims()))).status_code == 200


# --- rejected tokens ---


def _cases() -> dict[str, Callable[[SigningKey, SigningKey], str]]:
    v2 = TENANT.v2_claims
    return {
        "garbage": lambda key, foreign: "not-a-jwt",
        "alg none": lambda key, foreign: unsigned(v2(), key.kid),
        "HS256 signed with the public key": lambda key, foreign: hs256_with_public_key(v2(), key),
        "wrong audience": lambda key, foreign: key.sign(v2(aud="api://some-other-app")),
        "graph audience": lambda key, foreign: key.sign(v2(aud="00000003-0000-0000-c000-000000000000")),
        "wrong issuer": lambda key, foreign: key.sign(v2(iss="https://evil.example/v2.0")),
        "issuer of another tenant": lambda key, foreign: key.sign(
            v2(iss=f"https://login.microsoftonline.com/{OTHER_TENANT.tenant_id}/v2.0")
        ),
        "another tenant": lambda key, foreign: key.sign(OTHER_TENANT.v2_claims()),
        "expired": lambda key, foreign: key.sign(v2(exp=v2()["iat"] - 3600)),
        "not yet valid": lambda key, foreign: key.sign(v2(nbf=v2()["iat"] + 3600)),
        "no expiry": lambda key, foreign: key.sign({k: v for k, v in v2().items() if k != "exp"}),
        "no oid": lambda key, foreign: key.sign({k: v for k, v in v2().items() if k != "oid"}),
        "tampered payload": lambda key, foreign: tampered(key.sign(v2()), oid=str(uuid.uuid4())),
        "unknown kid from a foreign key": lambda key, foreign: foreign.sign(v2()),
        "foreign key under a known kid": lambda key, foreign: foreign.sign(v2(), kid=key.kid),
    }


@pytest.mark.parametrize("case", list(_cases()))
async def test_bad_tokens_get_401_with_the_challenge(
    base: str, key: SigningKey, foreign_key: SigningKey, case: str
) -> None:
    response = await post_mcp(base, _cases()[case](key, foreign_key))
    assert response.status_code == 401
    params = challenge(response)
    assert params["error"] == "invalid_token"
    assert params["resource_metadata"] == f"{base}/.well-known/oauth-protected-resource/mcp"
    assert params["scope"] == SCOPE
    assert response.json()["error"] == "invalid_token"


async def test_no_token_gets_401_pointing_at_the_metadata(base: str) -> None:
    response = await post_mcp(base)
    assert response.status_code == 401
    params = challenge(response)
    assert "error" not in params  # RFC 6750 §3.1: no error code when no credentials were sent
    assert params["scope"] == SCOPE
    async with httpx2.AsyncClient() as http:  # follow it, as a client does
        metadata = (await http.get(params["resource_metadata"])).json()
    assert metadata["resource"] == f"{base}/mcp"


async def test_a_valid_token_without_the_scope_gets_403_naming_it(base: str, key: SigningKey) -> None:
    response = await post_mcp(base, key.sign(TENANT.v2_claims(scp="User.Read")))
    assert response.status_code == 403
    params = challenge(response)
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == SCOPE
    assert SCOPE in response.json()["error_description"]


@pytest.mark.parametrize(
    ("settings", "claims", "status"),
    [
        ({"auth_allowed_roles": "Noisett.Generate"}, {"scp": None, "roles": ["Noisett.Generate"]}, 200),
        ({"auth_allowed_roles": "Noisett.Generate"}, {"scp": None, "roles": ["Other.Role"]}, 403),
        ({}, {"scp": None, "roles": ["Noisett.Generate"]}, 403),
        ({"auth_required_roles": "Designer,Marketing"}, {"roles": ["Marketing"]}, 200),
        ({"auth_required_roles": "Designer,Marketing"}, {}, 403),
        ({"auth_required_groups": "AAAA-group"}, {"groups": ["aaaa-group"]}, 200),
        ({"auth_required_groups": "aaaa-group"}, {"groups": ["bbbb-group"]}, 403),
        ({"auth_required_groups": "aaaa-group"}, {"hasgroups": True}, 403),
    ],
    ids=[
        "app role allowed",
        "app role not allowed",
        "app roles off by default",
        "required role present",
        "required role missing",
        "required group present",
        "required group missing",
        "group overage",
    ],
)
async def test_roles_and_groups(
    start: Endpoint, key: SigningKey, settings: dict[str, str], claims: dict[str, Any], status: int
) -> None:
    token_claims = {k: v for k, v in (TENANT.v2_claims() | claims).items() if v is not None}
    async with start(**settings) as base:
        response = await post_mcp(base, key.sign(token_claims))
    assert response.status_code == status
    if status == 403:
        assert challenge(response)["error"] == "insufficient_scope"
        if "hasgroups" in claims:
            assert "too many groups" in response.json()["error_description"]


# --- signing keys ---


async def test_a_rotated_in_key_is_accepted_after_one_refetch(
    start: Endpoint, key: SigningKey, jwks: JwksServer
) -> None:
    async with start(auth_jwks_cooldown=0.2) as base:
        assert (await post_mcp(base, key.sign(TENANT.v2_claims()))).status_code == 200
        assert jwks.fetches == 1
        rotated = SigningKey()
        jwks.keys.append(rotated)
        await anyio.sleep(0.3)  # past the cooldown that the first fetch started
        assert (await post_mcp(base, rotated.sign(TENANT.v2_claims()))).status_code == 200
        assert (await post_mcp(base, key.sign(TENANT.v2_claims()))).status_code == 200
    assert jwks.fetches == 2


async def test_made_up_key_ids_do_not_flood_the_key_endpoint(
    base: str, key: SigningKey, foreign_key: SigningKey, jwks: JwksServer
) -> None:
    for _ in range(10):
        response = await post_mcp(base, foreign_key.sign(TENANT.v2_claims(), kid=uuid.uuid4().hex))
        assert response.status_code == 401
    assert (await post_mcp(base, key.sign(TENANT.v2_claims()))).status_code == 200
    assert jwks.fetches == 1  # the first unknown kid fetched the set; the rest waited out the cooldown


# --- open and closed paths, metadata, CORS, DNS rebinding ---


async def test_protected_resource_metadata(base: str) -> None:
    async with httpx2.AsyncClient() as http:
        for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
            response = await http.get(base + path)
            assert response.status_code == 200
            assert response.json() == {
                "resource": f"{base}/mcp",
                "authorization_servers": [f"https://login.microsoftonline.com/{TENANT.tenant_id}/v2.0"],
                "scopes_supported": [SCOPE],
                "bearer_methods_supported": ["header"],
                "resource_name": "Noisett",
            }
        # Behind Container Apps ingress, TLS ends at the proxy: the resource keeps the client's scheme.
        behind_proxy = await http.get(
            f"{base}/.well-known/oauth-protected-resource/mcp", headers={"X-Forwarded-Proto": "https"}
        )
    assert behind_proxy.json()["resource"] == base.replace("http://", "https://") + "/mcp"


async def test_health_and_discovery_are_open_and_everything_else_needs_a_token(base: str) -> None:
    async with httpx2.AsyncClient() as http:
        assert (await http.get(f"{base}/healthz")).status_code == 200
        assert (await http.get(f"{base}/health")).status_code == 200
        assert (await http.get(f"{base}/.well-known/oauth-authorization-server")).status_code == 404
        for method, path in [("GET", "/mcp"), ("DELETE", "/mcp"), ("GET", "/"), ("GET", "/anything")]:
            response = await http.request(method, base + path)
            assert response.status_code == 401, (method, path)
            assert "resource_metadata" in challenge(response)


async def test_dns_rebinding_protection_stays_on(start: Endpoint, key: SigningKey) -> None:
    token = key.sign(TENANT.v2_claims())
    async with start(allowed_hosts="noisett.example.com") as base:
        assert (await post_mcp(base, token, Host="evil.example")).status_code == 421
        assert (await post_mcp(base, token, Host="noisett.example.com")).status_code == 200


async def test_cors_lets_configured_origins_read_the_challenge(start: Endpoint) -> None:
    origin = "https://app.example.com"
    async with start(cors_origins=origin) as base, httpx2.AsyncClient() as http:
        preflight = await http.options(
            f"{base}/mcp",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,mcp-protocol-version",
            },
        )
        refused = await post_mcp(base, Origin=origin)
        stranger = await http.options(
            f"{base}/mcp", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert {"GET", "POST", "DELETE"} <= set(preflight.headers["access-control-allow-methods"].split(", "))
    allowed_headers = preflight.headers["access-control-allow-headers"].lower()
    assert all(h in allowed_headers for h in ("authorization", "mcp-protocol-version", "mcp-session-id"))
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == origin
    exposed = refused.headers["access-control-expose-headers"].lower()
    assert "www-authenticate" in exposed and "mcp-session-id" in exposed
    assert stranger.status_code == 400


async def test_half_or_malformed_settings_are_refused(auth_settings: Callable[..., Settings]) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"azure_ad_client_id": None}, "AZURE_AD_CLIENT_ID"),
        ({"azure_ad_tenant_id": None}, "AZURE_AD_TENANT_ID"),
        ({"azure_ad_tenant_id": "contoso.onmicrosoft.com"}, "Directory (tenant) ID"),
        ({"auth_tenants": "not-a-guid"}, "NOISETT_AUTH_TENANTS"),
    ]
    for overrides, named in cases:
        with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
            create_app(Noisett(auth_settings(**overrides)))


# --- images belong to their maker ---


async def _generate(client: Client) -> str:
    result = await client.call_tool("generate_image", {"prompt": "a lighthouse at dusk", "steps": 1})
    assert not result.is_error, result.content
    return result.structured_content["images"][0]["id"]


async def _unknown_id_errors(client: Client, image_id: str) -> tuple[str, str]:
    """The get_image and image:// errors for `image_id`, with the id itself blanked out."""
    result = await client.call_tool("get_image", {"image_id": image_id})
    assert result.is_error
    with pytest.raises(MCPError) as error:
        await client.read_resource(f"image://{image_id}")
    return result.content[0].text.replace(image_id, "ID"), str(error.value).replace(image_id, "ID")


async def test_another_users_image_looks_like_an_unknown_id(base: str, key: SigningKey) -> None:
    alice, bob = TENANT.v2_claims(), TENANT.v2_claims()
    async with session(base, key.sign(alice)) as as_alice, session(base, key.sign(bob)) as as_bob:
        image_id = await _generate(as_alice)
        assert not (await as_alice.call_tool("get_image", {"image_id": image_id})).is_error
        assert (await as_alice.read_resource(f"image://{image_id}")).contents[0].blob
        never_made = uuid.uuid4().hex
        assert await _unknown_id_errors(as_bob, image_id) == await _unknown_id_errors(as_bob, never_made)


async def test_cancelling_another_users_image_looks_like_an_unknown_id_and_stops_nothing(
    start: Endpoint, key: SigningKey
) -> None:
    # Tenant sharing lets a colleague see the image, not stop its job.
    async with start(image_sharing="tenant") as base:
        alice, bob = TENANT.v2_claims(), TENANT.v2_claims()
        async with session(base, key.sign(alice)) as as_alice, session(base, key.sign(bob)) as as_bob:
            started = await as_alice.call_tool(
                "generate_image", {"prompt": "a long job", "steps": 60, "wait": False}
            )
            image_id = started.structured_content["images"][0]["id"]
            refused = await as_bob.call_tool("cancel_image", {"image_id": image_id})
            never_made = await as_bob.call_tool("cancel_image", {"image_id": uuid.uuid4().hex})
            assert refused.is_error and never_made.is_error
            blank = re.compile(r"[0-9a-f]{32}")
            assert blank.sub("ID", refused.content[0].text) == blank.sub("ID", never_made.content[0].text)
            seen = await as_bob.call_tool("get_image", {"image_id": image_id})
            assert seen.structured_content["image"]["status"] in ("queued", "running")
            assert not (await as_alice.call_tool("cancel_image", {"image_id": image_id})).is_error


async def test_tenant_sharing_shows_images_to_the_same_tenant_only(start: Endpoint, key: SigningKey) -> None:
    settings = {"image_sharing": "tenant", "auth_tenants": OTHER_TENANT.tenant_id}
    async with start(**settings) as base, session(base, key.sign(TENANT.v2_claims())) as as_alice:
        image_id = await _generate(as_alice)
        async with session(base, key.sign(TENANT.v2_claims())) as as_colleague:
            got = await as_colleague.call_tool("get_image", {"image_id": image_id})
            assert not got.is_error and got.structured_content["image"]["id"] == image_id
            assert (await as_colleague.read_resource(f"image://{image_id}")).contents[0].blob
        async with session(base, key.sign(OTHER_TENANT.v2_claims())) as as_outsider:
            assert (await as_outsider.call_tool("get_image", {"image_id": image_id})).is_error


async def test_images_made_without_auth_belong_to_local(
    auth_settings: Callable[..., Settings], key: SigningKey
) -> None:
    service = Noisett(auth_settings())
    claims = TENANT.v2_claims()
    user_oid, token = claims["oid"], key.sign(claims)
    async with serve_asgi(create_app(service)) as base, session(base, token) as user:
        async with Client(build_server(service)) as local:  # stdio's view: no token
            image_id = await _generate(local)
        assert (record := await service.store.load_record(image_id)) and record.owner == "local"
        assert (await user.call_tool("get_image", {"image_id": image_id})).is_error
        mine = await _generate(user)
        assert (
            record := await service.store.load_record(mine)
        ) and record.owner == f"{TENANT.tenant_id}/{user_oid}"


# --- audit ---


async def test_audit_logs_each_call_without_the_token_and_the_prompt_only_at_debug(
    base: str, key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    claims = TENANT.v2_claims()
    token = key.sign(claims)
    caplog.set_level(logging.INFO)
    async with session(base, token) as client:
        image_id = await _generate(client)
        await client.call_tool("get_image", {"image_id": uuid.uuid4().hex})
        caplog.set_level(logging.DEBUG, logger="noisett_mcp.audit")
        await client.call_tool("generate_image", {"prompt": "a secret harbour", "steps": 1, "wait": False})
    audit = [r for r in caplog.records if r.name == "noisett_mcp.audit" and r.levelno == logging.INFO]
    assert [(r.tool_name, r.outcome) for r in audit] == [  # type: ignore[attr-defined]
        ("generate_image", "ok"),
        ("get_image", "error"),
        ("generate_image", "ok"),
    ]
    first = audit[0]
    assert first.user_oid == claims["oid"] and first.tenant_id == TENANT.tenant_id  # type: ignore[attr-defined]
    assert first.image_ids == [image_id] and first.duration_ms >= 0  # type: ignore[attr-defined]
    assert f"user={claims['oid']}" in first.getMessage() and image_id in first.getMessage()
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert token not in everything and token.split(".")[2] not in everything
    assert "lighthouse" not in everything  # the first prompt was logged at INFO level only
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("a secret harbour" in message for message in debug)


# --- safe defaults on the command line ---


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NOISETT_", "AZURE_"))}
    clean |= {"NOISETT_DATA_DIR": str(tmp_path), "NOISETT_MODEL": "demo", "NOISETT_PRELOAD": "false"}
    return subprocess.run(
        [sys.executable, "-m", "noisett_mcp", "serve", "--transport", "http", *args],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,  # a guard against a hang, not a measurement
    )


def test_a_non_loopback_bind_without_auth_is_refused(tmp_path: Path) -> None:
    refused = _serve(tmp_path, "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2
    assert "AZURE_AD_TENANT_ID" in refused.stderr and "AZURE_AD_CLIENT_ID" in refused.stderr
    assert "--insecure-no-auth" in refused.stderr
    half = _serve(tmp_path, "--host", "0.0.0.0", AZURE_AD_TENANT_ID=TENANT.tenant_id)
    assert half.returncode == 2 and "AZURE_AD_CLIENT_ID is not set" in half.stderr


def test_insecure_no_auth_overrides_with_a_warning(tmp_path: Path) -> None:
    # 192.0.2.1 is TEST-NET-1, on no interface here: the check passes, the warning prints, and the bind
    # fails, so no server is ever exposed by this test.
    result = _serve(tmp_path, "--host", "192.0.2.1", "--port", "0", "--insecure-no-auth")
    assert "WARNING: --insecure-no-auth" in result.stderr and "NO authentication" in result.stderr
    assert "refusing" not in result.stderr

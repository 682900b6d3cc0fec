"""Entra access tokens, checked with PyJWT against the tenant's signing keys (RS256 only, both issuers,
both audiences, `tid`, `exp`/`nbf`), and the authorization rules that turn a valid token into a 403."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import anyio
import jwt
from mcp.server.auth.provider import AccessToken, TokenVerifier

from noisett_mcp import __version__
from noisett_mcp.auth.config import SCOPE_NAME, EntraConfig
from noisett_mcp.errors import TokenRejected

log = logging.getLogger(__name__)

# Clock skew allowed on `nbf` and `exp`: Entra's and ours may disagree by a little.
LEEWAY_SECONDS = 60
# Entra announces new signing keys weeks before using them, so a long cache is safe; a token with an
# unknown `kid` still forces a refetch (after the cooldown).
JWKS_LIFESPAN_SECONDS = 900
JWKS_TIMEOUT_SECONDS = 10


class EntraTokenVerifier(TokenVerifier):
    """Verifies Entra access tokens for this app. Returns None for any token it does not accept."""

    def __init__(self, config: EntraConfig) -> None:
        self.config = config
        # PyJWKClient caches the key set and refetches it for an unknown `kid`, at most once per cooldown,
        # so a flood of made-up key ids cannot turn into a flood of requests to Entra.
        self._jwks = jwt.PyJWKClient(
            config.jwks_url,
            lifespan=JWKS_LIFESPAN_SECONDS,
            cooldown_duration=config.jwks_cooldown,
            timeout=JWKS_TIMEOUT_SECONDS,
            headers={"User-Agent": f"noisett-mcp/{__version__}"},
        )
        self._issuers = frozenset(i for t in config.tenants for i in config.issuers(t))
        self._limiter: anyio.CapacityLimiter | None = None

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            claims = await self._verify(token)
        except TokenRejected as exc:
            log.info("rejected an access token: %s", exc)
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("azp") or claims.get("appid") or ""),
            scopes=str(claims.get("scp", "")).split(),
            # The SDK checks expiry again, without leeway: move the deadline by the leeway we allow.
            expires_at=int(claims["exp"]) + LEEWAY_SECONDS,
            resource=_first(claims["aud"]),
            subject=claims.get("sub"),
            claims=claims,
        )

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"not a JWT ({exc})") from None
        if header.get("alg") != "RS256":
            raise TokenRejected(f"algorithm {header.get('alg')!r} is not RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("no key id (kid) in the header")
        key = await self._signing_key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=sorted(self.config.audiences),
                issuer=sorted(self._issuers),
                leeway=LEEWAY_SECONDS,
                # `oid` is checked by the gate, which says why a token without one is refused.
                options={"require": ["exp", "iss", "aud", "tid"]},
            )
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"{type(exc).__name__}: {exc}") from None
        tenant = str(claims["tid"]).lower()
        if tenant not in self.config.tenants:
            raise TokenRejected(f"tenant {tenant} is not accepted here")
        if claims["iss"] not in self.config.issuers(tenant):
            raise TokenRejected(f"issuer {claims['iss']!r} does not belong to the token's tenant {tenant}")
        return claims

    async def _signing_key(self, kid: str) -> jwt.PyJWK:
        if self._limiter is None:
            # A few threads at most: a slow key endpoint must not take the pool image encoding uses.
            self._limiter = anyio.CapacityLimiter(4)
        try:
            return await anyio.to_thread.run_sync(self._jwks.get_signing_key, kid, limiter=self._limiter)
        except jwt.PyJWKClientConnectionError as exc:
            log.error("could not fetch the token signing keys from %s: %s", self.config.jwks_url, exc)
            raise TokenRejected("signing keys unavailable") from None
        except jwt.PyJWKClientError as exc:
            raise TokenRejected(f"unknown signing key {kid!r} ({exc})") from None


def _first(audience: str | list[str]) -> str:
    return audience if isinstance(audience, str) else audience[0]


def denial(claims: dict[str, Any], config: EntraConfig) -> str | None:
    """Why a verified token may not use the server (the 403's description), or None when it may."""
    scopes = set(str(claims.get("scp", "")).split())
    roles = set(_strings(claims.get("roles")))
    if SCOPE_NAME not in scopes and not roles & config.allowed_roles:
        roles_too = f" or one of the app roles {_names(config.allowed_roles)}" if config.allowed_roles else ""
        return f"this server needs the delegated scope {config.scope}{roles_too}"
    if config.required_roles and not roles & config.required_roles:
        return (
            f"this server needs one of the app roles {_names(config.required_roles)}: "
            "ask an administrator to assign you one"
        )
    groups = {g.lower() for g in _strings(claims.get("groups"))}
    if config.required_groups and not groups & config.required_groups:
        if "groups" in (claims.get("_claim_names") or {}) or claims.get("hasgroups"):
            # Group overage: past about 200 groups Entra leaves them out of the token.
            return (
                "your account is in too many groups for them to fit in the token; the administrator "
                "can assign those groups to an app role and require the role instead"
            )
        return "this server needs membership in a group it allows: ask an administrator to add you"
    return None


def _strings(value: object) -> Iterable[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _names(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))

"""What an Entra access token must satisfy, resolved once from the settings."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from noisett_mcp.config import Settings

SCOPE_NAME = "access_as_user"


@dataclass(frozen=True)
class EntraConfig:
    """What a token must satisfy, resolved once from the settings."""

    tenant_id: str
    client_id: str
    tenants: frozenset[str]
    audiences: frozenset[str]
    authority: str
    jwks_url: str
    jwks_cooldown: float = 30.0
    allowed_roles: frozenset[str] = frozenset()
    required_roles: frozenset[str] = frozenset()
    required_groups: frozenset[str] = frozenset()
    public_url: str | None = None  # NOISETT_PUBLIC_URL: the origin clients reach, e.g. https://host

    @classmethod
    def from_settings(cls, settings: Settings) -> EntraConfig | None:
        """The auth config, or None when auth is off; ValueError names any setting that is wrong."""
        tenant, client = settings.azure_ad_tenant_id, settings.azure_ad_client_id
        if not tenant and not client:
            return None
        if not tenant or not client:
            missing = "AZURE_AD_TENANT_ID" if not tenant else "AZURE_AD_CLIENT_ID"
            raise ValueError(
                f"{missing} is not set: Entra auth needs both AZURE_AD_TENANT_ID (the Directory (tenant) ID) "
                "and AZURE_AD_CLIENT_ID (the app registration's Application (client) ID)"
            )
        tenant = _guid("AZURE_AD_TENANT_ID", tenant, "the Directory (tenant) ID")
        client = _guid("AZURE_AD_CLIENT_ID", client, "the Application (client) ID")
        extra = [_guid("NOISETT_AUTH_TENANTS", t, "a Directory (tenant) ID") for t in settings.auth_tenants]
        authority = settings.auth_authority.rstrip("/")
        if not authority.startswith("https://"):
            raise ValueError(f"NOISETT_AUTH_AUTHORITY must be an https:// URL, not {authority!r}")
        return cls(
            tenant_id=tenant,
            client_id=client,
            tenants=frozenset([tenant, *extra]),
            audiences=frozenset([client, f"api://{client}", *settings.auth_audiences]),
            authority=authority,
            jwks_url=settings.auth_jwks_url or f"{authority}/{tenant}/discovery/v2.0/keys",
            jwks_cooldown=settings.auth_jwks_cooldown,
            allowed_roles=frozenset(settings.auth_allowed_roles),
            required_roles=frozenset(settings.auth_required_roles),
            required_groups=frozenset(g.lower() for g in settings.auth_required_groups),
            public_url=settings.public_url,
        )

    @property
    def scope(self) -> str:
        """The full scope URI a client asks Entra for."""
        return f"api://{self.client_id}/{SCOPE_NAME}"

    @property
    def authorization_server(self) -> str:
        """The tenant's v2 issuer: VS Code and other clients read the tenant from its path."""
        return f"{self.authority}/{self.tenant_id}/v2.0"

    def issuers(self, tenant: str) -> tuple[str, str]:
        """The v2 and v1 issuers of a tenant's access tokens."""
        return f"{self.authority}/{tenant}/v2.0", f"https://sts.windows.net/{tenant}/"


def _guid(name: str, value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise ValueError(
            f"{name} must be {what}, a GUID like 00000000-0000-0000-0000-000000000000, not {value!r}"
        ) from None

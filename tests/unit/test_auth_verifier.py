"""The authorization rules that turn a valid token into a 403, and the reason each gives."""

from __future__ import annotations

from dataclasses import replace

from noisett_mcp.auth.config import EntraConfig
from noisett_mcp.auth.verifier import denial
from noisett_mcp.config import Settings

TENANT = "11111111-1111-1111-1111-111111111111"
CLIENT = "22222222-2222-2222-2222-222222222222"


def config(**overrides: object) -> EntraConfig:
    base = EntraConfig.from_settings(Settings(azure_ad_tenant_id=TENANT, azure_ad_client_id=CLIENT))
    assert base is not None
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_the_delegated_scope_is_enough_by_default() -> None:
    assert denial({"scp": "openid access_as_user"}, config()) is None


def test_without_the_scope_the_reason_names_it_and_any_allowed_role() -> None:
    reason = denial({"scp": "openid"}, config(allowed_roles=frozenset({"Noisett.Generate"})))
    assert reason is not None and f"api://{CLIENT}/access_as_user" in reason and "Noisett.Generate" in reason
    assert (
        denial({"roles": ["Noisett.Generate"]}, config(allowed_roles=frozenset({"Noisett.Generate"}))) is None
    )


def test_required_roles_and_groups_are_checked_after_the_scope() -> None:
    needs_role = config(required_roles=frozenset({"Designers"}))
    assert "Designers" in (denial({"scp": "access_as_user"}, needs_role) or "")
    assert denial({"scp": "access_as_user", "roles": ["Designers"]}, needs_role) is None
    needs_group = config(required_groups=frozenset({"g1"}))
    assert "group" in (denial({"scp": "access_as_user", "groups": ["g2"]}, needs_group) or "")
    assert denial({"scp": "access_as_user", "groups": ["G1"]}, needs_group) is None, "group ids ignore case"


def test_a_group_overage_says_why_the_groups_are_missing() -> None:
    overage = {"scp": "access_as_user", "_claim_names": {"groups": "src1"}}
    assert "too many groups" in (denial(overage, config(required_groups=frozenset({"g1"}))) or "")


def test_a_half_set_or_malformed_config_names_the_setting() -> None:
    for settings, named in (
        (Settings(azure_ad_tenant_id=TENANT), "AZURE_AD_CLIENT_ID"),
        (Settings(azure_ad_tenant_id="nope", azure_ad_client_id=CLIENT), "AZURE_AD_TENANT_ID"),
    ):
        try:
            EntraConfig.from_settings(settings)
        except ValueError as exc:
            assert named in str(exc)
        else:
            raise AssertionError(f"{named} was not checked")

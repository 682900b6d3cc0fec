"""Log redaction (telemetry's `redact`): tokens, keys and signatures never reach a log line, and a line
without secrets is left exactly as it was."""

from __future__ import annotations

import pytest

from noisett_mcp.telemetry import redact

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        (f"Authorization: Bearer {JWT}", JWT),
        (f"token {JWT} rejected", JWT),
        ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5==;", "c2VjcmV0a2V5=="),
        ("InstrumentationKey=0000-1111-2222;IngestionEndpoint=https://x", "0000-1111-2222"),
        ("GET https://acct.blob.core.windows.net/c/i.png?sv=2024&sig=AbC%2Bd3f&se=2026", "AbC%2Bd3f"),
        ('{"access_token": "opaque-value-123", "x": 1}', "opaque-value-123"),
        ("client_secret=s3cr3t&grant_type=client_credentials", "s3cr3t"),
        ("HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz0123456789", "hf_abcdefghijklmnopqrstuvwxyz0123456789"),
        ("password: hunter2", "hunter2"),
    ],
)
def test_a_secret_is_replaced_and_the_rest_of_the_line_stays(line: str, secret: str) -> None:
    assert redact(line) == line.replace(secret, "[REDACTED]")


@pytest.mark.parametrize(
    "line",
    [
        "generated 2 image(s) in 3.2 s for tenant 72f988bf/user",
        "image 0123456789abcdef0123456789abcdef saved to images/0123456789abcdef0123456789abcdef.png",
        "GET https://acct.blob.core.windows.net/c/i.png?sv=2024&se=2026 200",
        "style 'brand' is refused (malformed TOML)",
    ],
)
def test_a_line_without_secrets_is_unchanged(line: str) -> None:
    assert redact(line) == line

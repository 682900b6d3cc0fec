"""A stand-in for Microsoft Entra in tests: RSA signing keys, Entra-shaped access tokens, and a JWKS
endpoint served over real HTTP on 127.0.0.1 (a random port)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

VSCODE_CLIENT_ID = "aebc6443-996d-45c2-90f0-388ff96faa56"
AZURE_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"


@dataclass
class SigningKey:
    """An RSA key pair with its key id, as Entra publishes them."""

    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    private: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def jwk(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return public | {"kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid, **header})


class JwksServer:
    """Serves `{"keys": [...]}` at /keys and counts the fetches."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps({"keys": [key.jwk() for key in owner.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/keys"

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join()


@dataclass(frozen=True)
class Tenant:
    """One Entra tenant and the app registration Noisett runs as."""

    tenant_id: str
    client_id: str

    def v2_claims(self, **overrides: Any) -> dict[str, Any]:
        """A delegated v2 access token, as VS Code gets it for api://{client}/access_as_user."""
        now = int(time.time())
        claims = {
            "aud": self.client_id,
            "iss": f"https://login.microsoftonline.com/{self.tenant_id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "tid": self.tenant_id,
            "oid": str(uuid.uuid4()),
            "sub": uuid.uuid4().hex,
            "azp": VSCODE_CLIENT_ID,
            "scp": "access_as_user",
            "name": "Ada Lovelace",
            "ver": "2.0",
        }
        return claims | overrides

    def v1_claims(self, **overrides: Any) -> dict[str, Any]:
        """A delegated v1 access token, as `az account get-access-token --resource api://{client}` gets it."""
        claims = self.v2_claims(
            aud=f"api://{self.client_id}",
            iss=f"https://sts.windows.net/{self.tenant_id}/",
            appid=AZURE_CLI_CLIENT_ID,
            ver="1.0",
        )
        del claims["azp"]
        return claims | overrides


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], kid: str) -> str:
    """A token with `alg: none` and no signature."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


def hs256_with_public_key(claims: dict[str, Any], key: SigningKey) -> str:
    """The classic key-confusion forgery: HMAC-SHA256 keyed with the server's public key. Built by hand,
    because PyJWT refuses to make one."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = b64url(json.dumps(claims).encode())
    signature = hmac.new(key.public_pem(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def tampered(token: str, **changes: Any) -> str:
    """The token with its payload changed and its original signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{header}.{b64url(json.dumps(claims | changes).encode())}.{signature}"

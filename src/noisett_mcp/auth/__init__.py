"""Microsoft Entra ID on the streamable-HTTP endpoint.

- config.py: `EntraConfig`, what a token must satisfy, from the settings.
- verifier.py: `EntraTokenVerifier`, the SDK's `TokenVerifier` for Entra tokens, and `denial`, the
  authorization rules (scope, app roles, groups) that turn a valid token into a 403.
- gate.py: `install`, the RFC 9728 metadata and the gate that answers 401/403 with the challenge.
- caller.py: `current_caller`, who is calling inside a tool handler; `local` over stdio or without auth.
"""

from noisett_mcp.auth.caller import LOCAL_OWNER, Caller, current_caller
from noisett_mcp.auth.config import EntraConfig
from noisett_mcp.auth.gate import install
from noisett_mcp.auth.verifier import EntraTokenVerifier, denial

__all__ = [
    "LOCAL_OWNER",
    "Caller",
    "EntraConfig",
    "EntraTokenVerifier",
    "current_caller",
    "denial",
    "install",
]

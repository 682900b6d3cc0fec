"""The health endpoint's answer, shared by the MCP server and the GPU worker: 200 while the process
serves (loading included, so a probe does not restart a replica that is still loading the model), 503
once its model failed to load."""

from __future__ import annotations

from typing import Any, Literal

from starlette.responses import JSONResponse

EngineState = Literal["idle", "loading", "ready", "error"]


def health_response(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=503 if body["status"] == "error" else 200)

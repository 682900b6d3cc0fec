"""The official conformance suite (@modelcontextprotocol/conformance, pinned in package.json, on the
pinned Node 22) against a real `serve --transport http`. Which scenarios run, and why the others do
not apply, is in tests/interop/README.md; conformance-baseline.yaml lists the checks that need the
suite's own fixture tools."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.interop.node import BIN, HERE, node, node_env, server_env
from tests.support import cli_http_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SCENARIOS = [
    "server-initialize",
    "tools-list",
    "ping",
    "dns-rebinding-protection",
    "http-header-validation",
    "caching",
    "sep-2164-resource-not-found",
    "server-stateless",
]


async def test_conformance_scenarios_that_apply_to_any_server(tmp_path: Path, model_cache: Path) -> None:
    node()  # skips (or fails in CI) where the suite is not installed
    failed: dict[str, str] = {}
    passed: dict[str, int] = {}
    async with cli_http_server(server_env(tmp_path, model_cache), tmp_path / "server.log") as base:
        for scenario in SCENARIOS:
            out = tmp_path / scenario
            with anyio.fail_after(180):
                result = await anyio.run_process(
                    [
                        str(BIN / "conformance"),
                        "server",
                        "--url",
                        f"{base}/mcp",
                        "--scenario",
                        scenario,
                        "--expected-failures",
                        str(HERE / "conformance-baseline.yaml"),
                        "-o",
                        str(out),
                    ],
                    env=node_env(),
                    cwd=HERE,
                    check=False,
                )
            checks = [check for path in out.glob("*/checks.json") for check in json.loads(path.read_text())]
            passed[scenario] = sum(check["status"] == "SUCCESS" for check in checks)
            if result.returncode != 0 or not checks:
                failed[scenario] = result.stdout.decode()[-3000:]
    assert not failed, "\n\n".join(f"{name}:\n{output}" for name, output in failed.items())
    assert all(passed.values()), passed

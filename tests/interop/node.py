"""The pinned Node clients in tests/interop/node_modules (installed by tests/interop/setup.sh)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

HERE = Path(__file__).parent
BIN = HERE / "node_modules" / ".bin"


def node() -> Path:
    """The pinned Node 22. Skipped where tests/interop/setup.sh has not run, except in CI: there it must."""
    binary = BIN / "node"
    if not binary.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must run the interop tests: tests/interop/setup.sh did not install them")
        pytest.skip("the interop clients are not installed: run tests/interop/setup.sh")
    return binary


def node_env() -> dict[str, str]:
    """The environment for a Node client: the pinned Node first on PATH, so that `#!/usr/bin/env node`
    scripts (the conformance suite) run on it too."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def server_env(tmp_path: Path, model_cache: Path) -> dict[str, str]:
    """The environment for a Noisett server process under test: the demo model, a data folder of its
    own, and a long wait, so that a first call that loads the model on a busy machine still returns
    its image rather than a handle."""
    return {
        **os.environ,
        "NOISETT_MODEL": "demo",
        "NOISETT_DATA_DIR": str(tmp_path / "data"),
        "MODEL_CACHE_DIR": str(model_cache),
        "NOISETT_WAIT_SECONDS": "240",
    }


async def run_client(config: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    """Run client.mjs with a config; return its report (it prints one even when a call fails)."""
    with anyio.fail_after(timeout):
        result = await anyio.run_process(
            [str(node()), str(HERE / "client.mjs"), json.dumps(config)], env=node_env(), cwd=HERE, check=False
        )
    lines = result.stdout.decode().strip().splitlines()
    logs = result.stderr.decode()[-4000:]
    assert result.returncode == 0 and lines, f"client.mjs exited {result.returncode}:\n{logs}"
    report = json.loads(lines[-1])
    assert report["ok"], f"{report.get('error')}\n{logs}"
    return report

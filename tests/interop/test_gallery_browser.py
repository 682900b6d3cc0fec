"""The gallery in a real browser: Debian's Chromium, driven by playwright-core, renders the MCP App with
ext-apps' own host side (AppBridge) against a real `noisett-mcp serve --transport http` on loopback.
The scenario is tests/interop/gallery/run.mjs; its screenshots and figures land in .ci/artifacts/gallery.

Needs /usr/bin/chromium (`apt-get install chromium`) and `npm ci --prefix tests/interop/gallery`.
Skipped without them, except in CI (CI=true), where it fails instead. NOISETT_UPDATE_SCREENSHOT=1 also
rewrites docs/gallery.png, the README's picture."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from tests.support import cli_http_server, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HOST = Path(__file__).parent / "gallery"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / ".ci" / "artifacts" / "gallery"


def _require_browser() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if not (HOST / "node_modules" / "playwright-core").is_dir():
        missing.append("the test host's npm packages (npm ci --prefix tests/interop/gallery)")
    if shutil.which("node") is None:
        missing.append("node")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


async def test_the_gallery_shows_progress_images_and_actions_in_chromium(
    tmp_path: Path, model_cache: Path
) -> None:
    _require_browser()
    host_port = free_port()
    server_env = {
        **os.environ,
        "NOISETT_MODEL": "demo",
        "NOISETT_DATA_DIR": str(tmp_path / "data"),
        "MODEL_CACHE_DIR": str(model_cache),
        "NOISETT_CORS_ORIGINS": f"http://127.0.0.1:{host_port}",  # the host page calls /mcp from there
    }
    async with cli_http_server(server_env, tmp_path / "server.log") as base:
        run_env = {
            **os.environ,
            "NOISETT_URL": base,
            "HOST_PORT": str(host_port),
            "ARTIFACT_DIR": str(ARTIFACTS),
            "CHROMIUM": str(CHROMIUM),
        }
        if os.environ.get("NOISETT_UPDATE_SCREENSHOT") == "1":
            run_env["DOCS_SCREENSHOT"] = str(ROOT / "docs" / "gallery.png")
        with anyio.fail_after(400):
            run = await anyio.run_process(
                ["node", str(HOST / "run.mjs")],
                env=run_env,
                check=False,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
    output = run.stdout.decode(errors="replace")
    assert run.returncode == 0, (
        f"{output}\n--- server log ---\n{(tmp_path / 'server.log').read_text()[-4000:]}"
    )
    metrics = json.loads((ARTIFACTS / "metrics.json").read_text())
    assert metrics["declaredCsp"] == {"connectDomains": [], "resourceDomains": []}
    print(output)

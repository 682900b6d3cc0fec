"""The gallery in a real browser: Debian's Chromium, driven by playwright-core, renders the MCP App with
ext-apps' own host side (AppBridge) against a real `noisett-mcp serve --transport http` on loopback.
The scenario is tests/interop/gallery/run.mjs; its screenshots and figures land in .ci/artifacts/gallery.
With Blob storage (Azurite), a short scenario shows the full image from its SAS link, the one origin the
gallery's CSP declares.

Needs /usr/bin/chromium (`apt-get install chromium`) and `npm ci --prefix tests/interop/gallery`.
Skipped without them, except in CI (CI=true), where it fails instead. NOISETT_UPDATE_SCREENSHOT=1 also
rewrites docs/gallery.png, the README's picture."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

from tests.azurite import Azurite
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


async def _run(
    tmp_path: Path, model_cache: Path, server: dict[str, str], run: dict[str, str]
) -> dict[str, Any]:
    """Start the server, run the scenario against it, and return its figures."""
    _require_browser()
    host_port = free_port()
    server_env = {
        **os.environ,
        "NOISETT_MODEL": "demo",
        "NOISETT_DATA_DIR": str(tmp_path / "data"),
        "MODEL_CACHE_DIR": str(model_cache),
        "NOISETT_CORS_ORIGINS": f"http://127.0.0.1:{host_port}",  # the host page calls /mcp from there
        **server,
    }
    artifacts = ARTIFACTS / ("sas" if "SAS_ORIGIN" in run else "")
    async with cli_http_server(server_env, tmp_path / "server.log") as base:
        run_env = {
            **os.environ,
            "NOISETT_URL": base,
            "HOST_PORT": str(host_port),
            "ARTIFACT_DIR": str(artifacts),
            "CHROMIUM": str(CHROMIUM),
            **run,
        }
        with anyio.fail_after(400):
            done = await anyio.run_process(
                ["node", str(HOST / "run.mjs")],
                env=run_env,
                check=False,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
    output = done.stdout.decode(errors="replace")
    server_log = (tmp_path / "server.log").read_text()[-4000:]
    assert done.returncode == 0, f"{output}\n--- server log ---\n{server_log}"
    print(output)
    return json.loads((artifacts / "metrics.json").read_text())


async def test_the_gallery_shows_progress_images_and_actions_in_chromium(
    tmp_path: Path, model_cache: Path
) -> None:
    run: dict[str, str] = {}
    if os.environ.get("NOISETT_UPDATE_SCREENSHOT") == "1":
        run["DOCS_SCREENSHOT"] = str(ROOT / "docs" / "gallery.png")
    metrics = await _run(tmp_path, model_cache, {}, run)
    assert metrics["declaredCsp"] == {"connectDomains": [], "resourceDomains": []}


async def test_with_blob_storage_the_full_image_comes_from_the_sas_host_the_csp_declares(
    tmp_path: Path, model_cache: Path, azurite: Azurite
) -> None:
    endpoint = urlsplit(azurite.endpoint("blob"))
    server = {
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "NOISETT_BLOB_IMAGES_CONTAINER": f"images-{secrets.token_hex(4)}",
        "NOISETT_BLOB_STYLES_CONTAINER": f"styles-{secrets.token_hex(4)}",
    }
    metrics = await _run(
        tmp_path, model_cache, server, {"SAS_ORIGIN": f"{endpoint.scheme}://{endpoint.netloc}"}
    )
    assert metrics["sasViewer"] == "url"

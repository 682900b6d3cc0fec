"""What a new user meets in the first ten minutes, through the real CLI and server processes: one-line
errors before any work, the hint to try the demo model, a prompt exit when the client goes away, logs
above the progress bar, and `styles check` on a fresh install."""

from __future__ import annotations

import ctypes.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from noisett_mcp.config import Settings
from tests.support import child_env

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
# The default (real) model, with the hub out of reach whatever the machine's network.
OFFLINE = {"NOISETT_MODEL": "HiDream-ai/HiDream-I1-Fast", "HF_HUB_OFFLINE": "1", "NOISETT_DEVICE": "cpu"}


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "noisett_mcp", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _images(settings: Settings) -> list[Path]:
    return sorted(settings.images_dir.glob("*.png")) if settings.images_dir.is_dir() else []


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("NOISETT_WAIT_SECONDS", "abc", "a valid number"),
        ("NOISETT_DEVICE", "gpu", "auto, cpu, cuda or cuda:N"),
        ("NOISETT_LOG_LEVEL", "loud", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("NOISETT_MAX_QUEUE", "0", "greater than or equal to 1"),
    ],
)
def test_a_bad_setting_exits_2_with_one_line_naming_it(
    settings: Settings, variable: str, value: str, allowed: str
) -> None:
    for command in (["generate", "a fox"], ["serve"]):
        result = _cli(child_env(settings, **{variable: value}), *command, timeout=60)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.splitlines()  # one line, no traceback
        assert line.startswith(f"error: {variable}={value!r}: ") and allowed in line, line


@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None, reason="this machine has an NVIDIA driver")
def test_cuda_asked_for_on_a_machine_without_it_is_refused_at_start(settings: Settings) -> None:
    result = _cli(child_env(settings, NOISETT_DEVICE="cuda"), "serve", timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "NOISETT_DEVICE=cuda" in line and "no NVIDIA driver" in line and "auto or cpu" in line


def test_the_engine_says_when_torch_sees_no_cuda() -> None:
    import torch

    from noisett_mcp.engine.pipeline import _device
    from noisett_mcp.errors import ModelUnavailable

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ModelUnavailable, match=r"NOISETT_DEVICE=cuda:1, but torch .* sees no CUDA GPU"):
        _device("cuda:1")


def test_out_and_steps_are_checked_before_rendering(settings: Settings, tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("")
    env = child_env(settings)
    for args, expected in [
        (["--out", str(a_file)], f"error: --out {a_file}: is a file, not a folder"),
        (["--out", "/proc/noisett"], "error: --out /proc/noisett: cannot make that folder"),
        (["--steps", "0"], "error: --steps 0: allowed 1 to 100"),
    ]:
        result = _cli(env, "generate", "a fox", *args, timeout=60)
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith(expected), line
    assert _images(settings) == []  # nothing was rendered


def test_generate_prints_where_it_saved_and_logs_above_the_bar(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _cli(child_env(settings), "generate", "a fox", "--steps", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    [saved] = _images(settings)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{saved}  seed=") and lines[1] == f"  copied to {out / saved.name}"
    # Every log line starts on a line of its own: tqdm clears its bar (a `\r` run) before writing it.
    log_lines = [
        line for line in result.stderr.split("\n") if re.search(r" (INFO|WARNING) noisett_mcp", line)
    ]
    assert any("loading" in line for line in log_lines), result.stderr  # logged while the bar is up
    for line in log_lines:
        assert re.match(r"\d{4}-\d\d-\d\d ", line.split("\r")[-1]), repr(line)


def test_the_default_model_without_hub_or_cache_fails_fast_with_the_demo_hint(settings: Settings) -> None:
    result = _cli(child_env(settings, **OFFLINE), "generate", "a fox")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: generation failed: cannot load HiDream-ai/HiDream-I1-Fast: no GPU here")
    assert "--model demo" in last and "NOISETT_MODEL to a local folder" in last
    assert "Traceback" not in result.stderr


async def test_an_mcp_client_gets_the_demo_hint_as_a_tool_error_not_queued(settings: Settings) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "noisett_mcp", "serve"], env=child_env(settings, **OFFLINE)
    )
    async with Client(params) as client:
        for attempt in ("while loading", "after the load failed"):
            result = await client.call_tool("generate_image", {"prompt": "a fox"})
            assert result.is_error, (attempt, result)
            text = " ".join(block.text for block in result.content if block.type == "text")
            assert "--model demo" in text and "queued" not in text, (attempt, text)


def test_stdio_exits_at_once_when_stdin_closes_while_the_model_loads(settings: Settings) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "noisett_mcp", "serve"],
        env=child_env(settings, NOISETT_PRELOAD="true"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None

    def ask(message: dict[str, object]) -> None:
        server.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        server.stdin.flush()

    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    ask({"id": 1, "method": "initialize", "params": init})
    assert json.loads(server.stdout.readline())["id"] == 1
    ask({"method": "notifications/initialized"})
    ask({"id": 2, "method": "tools/list"})  # the model starts loading after this answer
    assert json.loads(server.stdout.readline())["id"] == 2
    closed = time.monotonic()
    server.stdin.close()
    assert server.wait(timeout=30) == 0
    waited = time.monotonic() - closed
    stderr = server.stderr.read() if server.stderr else ""
    # It did not wait for the load (torch alone takes seconds to import): the model never got ready.
    assert "ready on" not in stderr, (waited, stderr)


def test_styles_check_on_a_fresh_install_says_where_styles_go(settings: Settings) -> None:
    result = _cli(child_env(settings), "styles", "check", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"no styles folder yet: {settings.resolved_styles_dir} does not exist")
    assert "NOISETT_STYLES_DIR" in result.stdout and "noisett-mcp styles check DIR" in result.stdout


def test_styles_check_calls_styles_for_other_models_so_not_refused(settings: Settings) -> None:
    # loras/contoso-flat.toml is for HiDream-I1 and ships without its weights.
    result = _cli(child_env(settings), "styles", "check", str(ROOT / "loras"), "--no-keys", timeout=60)
    assert result.returncode == 0, result.stdout
    [line, summary] = result.stdout.splitlines()
    assert line == "other    contoso-flat.toml: for other models (HiDream-ai/HiDream-I1-*), not demo"
    assert summary.endswith("0 refused, 1 for other models")

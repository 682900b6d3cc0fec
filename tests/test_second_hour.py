"""What a user meets in the second and third hour, through the real CLI and scripts: a wrong model or
quantization refused at start in one line (before torch, before the hub), paths relative to where the user
stands, Ctrl-C that stops a stdio server on a terminal, and messages that name the CLI's own flags."""

from __future__ import annotations

import importlib.util
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from noisett_mcp.commands.preflight import has_nvidia_driver, quantize_problem
from noisett_mcp.config import Settings
from tests.support import child_env

ROOT = Path(__file__).resolve().parent.parent
# Runs the CLI as `noisett-mcp` does, then prints which heavy or networked modules it imported on the way.
_CLI_THEN_IMPORTS = """
import sys
from noisett_mcp.cli import main
try:
    main(sys.argv[1:])
finally:
    print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'huggingface_hub'}))
"""


def _refused(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    """The one line on stderr of a CLI run that exits 2 before importing torch or the hub client."""
    result = subprocess.run(
        [sys.executable, "-c", _CLI_THEN_IMPORTS, *args],
        env={**env, "HF_HUB_OFFLINE": "1"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == "[]\n", result.stdout  # no torch, diffusers or hub: refused in well under 10 s
    [line] = result.stderr.splitlines()  # one line, no traceback
    assert line.startswith("error: "), line
    return line


@pytest.mark.parametrize("command", [["generate", "a fox"], ["serve"]])
def test_a_model_folder_that_is_not_there_is_refused_naming_the_path_tried(
    settings: Settings, tmp_path: Path, command: list[str]
) -> None:
    line = _refused(child_env(settings), *command, "--model", "./no/such/folder", cwd=tmp_path)
    assert line.startswith(f"error: --model ./no/such/folder: no such folder ({tmp_path}/no/such/folder)")
    assert "--model" in line and "demo" in line and "HiDream-ai/HiDream-I1-Fast" in line
    env_line = _refused(child_env(settings, NOISETT_MODEL="./no/such/folder"), *command, cwd=tmp_path)
    assert env_line.startswith("error: NOISETT_MODEL=./no/such/folder: no such folder"), env_line


def test_a_folder_without_a_pipeline_is_refused_before_the_hub_is_asked(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "notes.txt").write_text("not a pipeline")
    line = _refused(child_env(settings), "generate", "a fox", "--model", str(tmp_path / "weights"))
    assert f"the folder {tmp_path / 'weights'} has no model_index.json" in line
    assert "save_pretrained" in line and "demo" in line


def test_a_name_that_is_neither_a_folder_nor_a_hub_id_is_refused(settings: Settings) -> None:
    line = _refused(child_env(settings, NOISETT_MODEL="my model!"), "serve")
    assert line.startswith("error: NOISETT_MODEL=my model!: neither a folder here nor a Hugging Face model")


@pytest.mark.skipif(has_nvidia_driver(), reason="this machine has an NVIDIA driver")
@pytest.mark.parametrize("device", ["cpu", "auto"])
@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_quantizing_on_a_cpu_is_refused_naming_the_setting_and_the_extra(
    settings: Settings, mode: str, device: str
) -> None:
    env = child_env(settings, NOISETT_QUANTIZE=mode, NOISETT_DEVICE=device)
    for command in (["generate", "a fox"], ["serve"]):
        line = _refused(env, *command)
        assert line.startswith(f"error: NOISETT_QUANTIZE={mode} quantizes with bitsandbytes on a CUDA GPU")
        assert "set NOISETT_QUANTIZE=none" in line
        if importlib.util.find_spec("bitsandbytes") is None:
            assert "pip install 'noisett-mcp[quantization]' (the `quantization` extra)" in line


def test_quantizing_on_a_gpu_without_bitsandbytes_names_the_extra() -> None:
    # The GPU machine's case, which this machine may not be: the same function the CLI calls.
    problem = quantize_problem("nf4", "auto", has_gpu=True, has_bitsandbytes=False)
    assert problem == (
        "NOISETT_QUANTIZE=nf4 needs bitsandbytes, which is not installed: pip install "
        "'noisett-mcp[quantization]' (the `quantization` extra), or set NOISETT_QUANTIZE=none"
    )
    assert quantize_problem("int8", "cuda", has_gpu=True, has_bitsandbytes=True) is None
    assert quantize_problem("none", "cpu", has_gpu=False, has_bitsandbytes=False) is None


def test_a_front_leaves_the_model_to_its_workers(settings: Settings) -> None:
    # NOISETT_QUEUE=azure: serve renders nothing, so a model path or quantization it cannot use is no error.
    env = child_env(settings, NOISETT_QUEUE="azure", NOISETT_QUANTIZE="nf4", NOISETT_MODEL="./elsewhere")
    line = _refused(env, "serve")
    assert "NOISETT_QUEUE=azure" in line and "QUANTIZE" not in line and "elsewhere" not in line


# --- paths from where the user stands, and the CLI's own words ---
def _write_png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (80, 60), (200, 80, 40)).save(path)


@pytest.mark.slow
def test_generate_reads_relative_paths_from_the_callers_folder_and_copies_with_their_umask(
    settings: Settings, tmp_path: Path
) -> None:
    caller = tmp_path / "caller"
    caller.mkdir()
    _write_png(caller / "source.png")
    relative = ["--source", "./source.png", "--out", "."]
    result = subprocess.run(
        [sys.executable, "-m", "noisett_mcp", "generate", "a red fox", "--steps", "2", *relative],
        env=child_env(settings),
        cwd=caller,
        umask=0o027,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [copied] = [path for path in caller.glob("*.png") if path.name != "source.png"]
    assert result.stdout.splitlines()[1] == f"  copied to {copied}"
    assert copied.stat().st_mode & 0o777 == 0o640  # the user's umask, not the store's private 0600


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / ".venv/bin/noisett-mcp").exists(), reason="needs scripts/setup's .venv")
def test_the_readme_demo_command_writes_into_the_folder_it_is_run_from(
    settings: Settings, tmp_path: Path
) -> None:
    # As the README writes it, from a folder outside the clone (scripts/setup reuses the .venv there).
    env = {k: v for k, v in child_env(settings).items() if k not in ("VENV", "PYTHONPATH")}
    result = subprocess.run(
        [str(ROOT / "scripts/demo"), "a red fox", "--style", "demo-flat", "--out", "."],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    [copied] = tmp_path.glob("*.png")
    assert f"  copied to {copied}" in result.stdout.splitlines()


def test_source_flags_are_checked_in_the_clis_words_before_any_work(
    settings: Settings, tmp_path: Path
) -> None:
    env = child_env(settings)
    line = _refused(env, "generate", "a fox", "--source", "missing.png", cwd=tmp_path)
    assert line == f"error: --source missing.png: no such file ({tmp_path / 'missing.png'})"
    line = _refused(env, "generate", "a fox", "--strength", "0.3")
    assert line == (
        "error: --strength applies only with a source image: add --source FILE or --source-image-id ID"
    )
    _write_png(tmp_path / "a.png")
    both = ["--source", str(tmp_path / "a.png"), "--source-image-id", "0" * 32]
    line = _refused(env, "generate", "a fox", *both)
    assert line == "error: give one source image: --source FILE or --source-image-id ID, not both"
    line = _refused(env, "generate", "")
    assert line == "error: PROMPT is empty: say what the image shows, in 1 to 2000 characters"
    line = _refused(env, "generate", "a fox", "--style-strength", "3")
    assert line == "error: --style-strength 3.0: allowed 0 to 2"


@pytest.mark.parametrize(
    ("args", "usage", "unknown"),
    [
        (["generate", "a fox", "--stps", "3"], "usage: noisett-mcp generate ", "--stps 3"),
        (["serve", "--trasport", "http"], "usage: noisett-mcp serve ", "--trasport http"),
        (["styles", "check", "--no-kes"], "usage: noisett-mcp styles check ", "--no-kes"),
    ],
)
def test_a_typod_option_shows_the_usage_of_its_command(
    settings: Settings, args: list[str], usage: str, unknown: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "noisett_mcp", *args],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(usage), result.stderr
    assert result.stderr.splitlines()[-1].endswith(f"error: unrecognized arguments: {unknown}")


# --- Ctrl-C on a stdio server in a terminal ---
def _read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    """What the terminal shows until `wanted` appears, the other end closes, or `timeout` passes."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # EIO: the server closed the terminal (it exited)
                break
    return seen


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX terminal")
@pytest.mark.parametrize("preload", ["false", "true"])
def test_the_first_ctrl_c_stops_a_stdio_server_on_a_terminal(settings: Settings, preload: str) -> None:
    terminal, server_end = pty.openpty()
    server = subprocess.Popen(
        [sys.executable, "-m", "noisett_mcp", "serve"],
        env=child_env(settings, NOISETT_PRELOAD=preload),
        stdin=server_end,
        stdout=server_end,
        stderr=server_end,
        start_new_session=True,  # SIGINT goes to the server alone, as a terminal's Ctrl-C would
    )
    os.close(server_end)
    try:
        shown = _read_until(terminal, b"Ctrl-C stops it.", timeout=120)
        [notice] = [line for line in shown.decode().splitlines() if "waiting for an MCP client" in line]
        assert notice.startswith("noisett-mcp: serving MCP over stdio"), shown
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 128 + signal.SIGINT
        shown += _read_until(terminal, b"\0", timeout=1)
        assert b"Traceback" not in shown and b"KeyboardInterrupt" not in shown, shown.decode()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        os.close(terminal)


def test_a_stdio_server_for_a_client_says_nothing_on_stderr_before_the_client_speaks(
    settings: Settings,
) -> None:
    # A client's stdin is a pipe: no notice (clients show stderr to users as server logs).
    result = subprocess.run(
        [sys.executable, "-m", "noisett_mcp", "serve"],
        env=child_env(settings, NOISETT_PRELOAD="false"),
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "waiting for an MCP client" not in result.stderr, result.stderr


# --- the docs say what the CLI does ---
def test_styles_check_on_the_demo_model_checks_the_built_in_styles_the_docs_promise(
    settings: Settings,
) -> None:
    guide = (ROOT / "loras" / "README.md").read_text()
    assert "`refused` or `other` (made for another model)" in guide and "`skipped`" not in guide
    assert "styles check --model demo` checks them" in guide
    result = subprocess.run(
        [sys.executable, "-m", "noisett_mcp", "styles", "check", "--model", "demo", "--no-keys"],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("no styles folder yet: ")  # the user's folder: none yet
    assert {line.split()[1] for line in lines[1:3]} == {"demo-flat.toml:", "demo-grain.toml:"}
    assert all(line.startswith("ok ") for line in lines[1:3]), lines
    assert "(built in, offered with the demo model) for demo: 2 ok" in lines[3]

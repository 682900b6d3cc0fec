"""What a user meets in the second and third hour, through the real CLI and scripts: a wrong model or
quantization refused at start in one line (before torch, before the hub), paths relative to where the user
stands, Ctrl-C that stops a stdio server on a terminal, and messages that name the CLI's own flags."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
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

"""The release ships only itself: an sdist built from a clone whose test machinery is installed
(node_modules, Azurite in .ci/node, virtual environments, caches) holds only what git tracks, and
scripts/check-sdist, which CI runs on it after the tests, refuses one that holds more."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "check-sdist"
# What scripts/test, scripts/test-lowest and the tools leave in a clone (real folders, not links).
MACHINERY = [
    ".ci/node/node_modules/azurite",
    "tests/interop/node_modules/node",
    "tests/interop/gallery/node_modules/playwright",
    ".venv/lib",
    ".venv-lowest/lib",
    "tests/__pycache__",
    ".ruff_cache/0.8",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="needs `build` (the dev group)"),
]


def _clone_with_test_machinery(into: Path) -> Path:
    """The files git tracks, as they are in this working tree, plus a file in each folder of MACHINERY."""
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True, check=True
    ).stdout
    for name in filter(None, tracked.split("\0")):
        if (ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)
    for folder in MACHINERY:
        (into / folder).mkdir(parents=True)
        (into / folder / "index.js").write_bytes(b"x" * 4096)
    return into


def _check(sdist: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), str(sdist), *options], capture_output=True, text=True, timeout=60
    )


def test_the_sdist_of_a_clone_after_the_tests_holds_only_what_git_tracks(tmp_path: Path) -> None:
    clone = _clone_with_test_machinery(tmp_path / "clone")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path / "dist"), str(clone)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    [sdist] = (tmp_path / "dist").glob("noisett_mcp-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert not [name for name in names if "node_modules" in name or "/.venv" in name or "cache" in name]
    assert any(name.endswith("/src/noisett_mcp/cli.py") for name in names)
    result = _check(sdist)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{sdist.name}: ") and "only the package" in result.stdout
    # The bounds hold too: the same sdist fails a file count below its own.
    count = sum(1 for name in names if not name.endswith("/"))
    tight = _check(sdist, "--max-files", "10")
    assert tight.returncode == 1 and f"{count} files, more than the bound of 10" in tight.stderr


def test_check_sdist_names_each_stray_file(tmp_path: Path) -> None:
    sdist = tmp_path / "noisett_mcp-0.0.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for name in ["README.md", "tests/interop/node_modules/node/bin/node", ".ci/node/azurite.js"]:
            member = tarfile.TarInfo(f"noisett_mcp-0.0.0/{name}")
            member.size = 3
            archive.addfile(member, io.BytesIO(b"abc"))
    result = _check(sdist)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert "tests/interop/node_modules/node/bin/node: test machinery" in lines[0]
    assert ".ci/node/azurite.js: test machinery" in lines[1]

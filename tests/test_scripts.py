"""The developer scripts work as a newcomer runs them: scripts/check without an activated venv, and
scripts/test without refetching npm packages that are already installed at their pinned versions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.skipif(
    not ((VENV_BIN / "ruff").exists() and (VENV_BIN / "mypy").exists()), reason="needs the lint group"
)
def test_scripts_check_runs_the_venvs_tools_without_activating_it() -> None:
    # A PATH with neither ruff nor mypy, as a shell that never sourced .venv/bin/activate has.
    env = {**os.environ, "PATH": "/usr/bin:/bin", "VENV": str(VENV_BIN.parent)}
    result = subprocess.run(
        [str(ROOT / "scripts/check")], env=env, cwd="/", capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"+ {VENV_BIN}/ruff check ." in result.stderr and f"+ {VENV_BIN}/mypy" in result.stderr


@pytest.mark.skipif(shutil.which("npm") is None, reason="needs npm")
def test_npm_ci_once_installs_a_lockfile_once_and_again_only_when_it_changes(tmp_path: Path) -> None:
    # A package whose one dependency is a local folder: npm installs it offline.
    (tmp_path / "dep").mkdir()
    (tmp_path / "dep" / "package.json").write_text('{"name": "dep", "version": "1.0.0"}')
    package = {"name": "t", "version": "1.0.0", "dependencies": {"dep": "file:./dep"}}
    (tmp_path / "package.json").write_text(json.dumps(package))
    lock = {
        "name": "t",
        "version": "1.0.0",
        "lockfileVersion": 3,
        "requires": True,
        "packages": {
            "": package,
            "dep": {"version": "1.0.0"},
            "node_modules/dep": {"resolved": "dep", "link": True},
        },
    }
    (tmp_path / "package-lock.json").write_text(json.dumps(lock))

    def install() -> None:
        subprocess.run([str(ROOT / "scripts/npm-ci-once"), str(tmp_path)], check=True, timeout=300)

    install()
    assert (tmp_path / "node_modules" / "dep" / "package.json").exists()
    left = tmp_path / "node_modules" / "left-by-the-last-install"
    left.touch()
    install()  # nothing changed: `npm ci`, which empties node_modules first, did not run
    assert left.exists()
    # The lockfile changes (here its layout only, as a new pin would change its text): installed again.
    (tmp_path / "package-lock.json").write_text(json.dumps(lock, indent=2))
    install()
    assert not left.exists() and (tmp_path / "node_modules" / "dep" / "package.json").exists()


def test_the_benchmark_runner_has_help_and_refuses_a_name_it_does_not_have() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "benchmarks.run", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    shown = run("--help")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: python -m benchmarks.run")
    assert "batch" in shown.stdout and "###" not in shown.stdout  # it ran nothing
    typo = run("batc")
    assert typo.returncode == 2 and "###" not in typo.stdout
    assert typo.stderr.splitlines()[-1].startswith(
        "python -m benchmarks.run: error: no benchmark named batc; the benchmarks are batch, "
    )

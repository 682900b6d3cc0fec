"""README.md stays true: every setting is in its configuration table, and its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from noisett_mcp.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _env_names(name: str) -> set[str]:
    field = Settings.model_fields[name]
    alias = field.validation_alias
    if alias is not None:
        return {str(choice) for choice in alias.choices}
    return {f"NOISETT_{name.upper()}"}


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    rows = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", README, flags=re.MULTILINE))
    missing = [name for name in Settings.model_fields if not _env_names(name) & rows]
    assert not missing, f"settings without a README row: {missing}"


def test_the_readme_commands_exist() -> None:
    for command in ("serve", "worker", "generate", "demo-model", "styles"):
        assert f"noisett-mcp {command}" in README
        help_text = subprocess.run(
            [sys.executable, "-m", "noisett_mcp", command, "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "usage: noisett-mcp" in help_text

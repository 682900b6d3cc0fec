"""README.md stays true: every setting is in its configuration table, and its commands exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from noisett_mcp import __version__
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


ROOT = Path(__file__).resolve().parent.parent


def _quick_start_commands() -> list[str]:
    """The commands of the README's first code block (comments dropped)."""
    block = re.search(r"## Quick start, from a clone\n.*?```bash\n(.*?)```", README, flags=re.DOTALL)
    assert block, "the README has no quick start"
    return [line.split("#")[0].strip() for line in block[1].splitlines() if line.split("#")[0].strip()]


def test_ci_runs_the_quick_start_commands_as_written() -> None:
    commands = _quick_start_commands()
    assert commands == ["scripts/demo", "scripts/test"]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert command in ci_lines, f"{command!r} is in the README but .ci/run does not run it"
        assert (ROOT / command).stat().st_mode & 0o111, f"{command} is not executable"


def test_the_registry_metadata_matches_the_package_and_the_readme() -> None:
    server = json.loads((ROOT / "server.json").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert server["$schema"].startswith("https://static.modelcontextprotocol.io/schemas/")
    # The registry proves ownership of a PyPI package by this line in its description (the README).
    assert f"<!-- mcp-name: {server['name']} -->" in README
    assert re.fullmatch(r"io\.github\.[\w-]+/[\w.-]+", server["name"])
    assert len(server["description"]) <= 100
    [package] = server["packages"]
    assert package["registryType"] == "pypi" and package["identifier"] == project["name"]
    assert server["version"] == package["version"] == __version__
    assert package["transport"] == {"type": "stdio"}
    # What the registry tells a client to run is a real command, and the variables are ones we read.
    [argument] = package["packageArguments"]
    subprocess.run(
        [sys.executable, "-m", "noisett_mcp", argument["value"], "--help"], check=True, capture_output=True
    )
    read = {name for field in Settings.model_fields for name in _env_names(field)} | {"HF_TOKEN"}
    assert {variable["name"] for variable in package["environmentVariables"]} <= read


def test_the_license_file_ships_with_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


# --- every `docker build` the docs show uses only what the Dockerfile reads ---
def _docker_builds(lines: list[str]) -> list[str]:
    return [found for line in lines for found in re.findall(r"docker (?:buildx )?build\b[^`;|&]*", line)]


def _markdown_commands(text: str) -> list[str]:
    """The lines of a Markdown page's code blocks, and its code spans (a span may wrap a line)."""
    text = re.sub(r"\\\n\s*", " ", text)
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.DOTALL)
    spans = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    return [line for block in blocks for line in block.splitlines()] + [" ".join(s.split()) for s in spans]


def _comment_commands(dockerfile: str) -> list[str]:
    """The lines of a Dockerfile's comments, continuations joined."""
    comments = "\n".join(line.lstrip("# ") for line in dockerfile.splitlines() if line.startswith("#"))
    return re.sub(r"\\\n\s*", " ", comments).splitlines()


def _build_inputs(command: str) -> tuple[set[str], set[str]]:
    """The build arguments and secret ids that one `docker build` command passes."""
    args: set[str] = set()
    secrets: set[str] = set()
    words = command.split()
    for flag, value in zip(words, [*words[1:], ""], strict=True):
        if flag in ("--build-arg", "--secret") or flag.startswith(("--build-arg=", "--secret=")):
            given = flag.split("=", 1)[1] if "=" in flag else value
            if flag.startswith("--build-arg"):
                args.add(given.split("=", 1)[0])
            else:
                secrets.add(dict(part.split("=", 1) for part in given.split(",") if "=" in part)["id"])
    return args, secrets


def test_every_docker_build_in_the_docs_uses_only_arguments_and_secrets_the_dockerfile_reads() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    declared_args = set(re.findall(r"^ARG (\w+)", dockerfile, flags=re.MULTILINE))
    declared_secrets = set(re.findall(r"--mount=type=secret,id=(\w+)", dockerfile))
    builds = {"Dockerfile": _docker_builds(_comment_commands(dockerfile))}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        builds[page.name] = _docker_builds(_markdown_commands(page.read_text()))
    assert builds["Dockerfile"] and builds["deploy.md"], builds  # the check reads the commands it means to
    for where, commands in builds.items():
        for command in commands:
            args, secrets = _build_inputs(command)
            assert args <= declared_args, f"{where}: {command!r} passes {args - declared_args}, no ARG of it"
            assert secrets <= declared_secrets, (
                f"{where}: {command!r} passes secret {secrets - declared_secrets}"
            )


def test_every_section_the_templates_point_to_exists() -> None:
    # `README, "Microsoft Entra ID"` or `docs/deploy.md, "Choose a layout"` in a Bicep comment or description.
    headings = {
        "README": re.findall(r"^#+ (.+)$", README, flags=re.MULTILINE),
        "docs/deploy.md": re.findall(r"^#+ (.+)$", (ROOT / "docs/deploy.md").read_text(), flags=re.MULTILINE),
    }
    pointers = [
        (template.name, page, section)
        for template in sorted((ROOT / "infra/bicep").rglob("*.bicep*"))
        for page, section in re.findall(r"(README|docs/deploy\.md), \"([^\"]+)\"", template.read_text())
    ]
    assert len(pointers) >= 3, pointers
    for template, page, section in pointers:
        assert section in headings[page], f"{template} points to {page}, {section!r}: no such section"


def test_the_readmes_first_paragraph_counts_and_names_every_tool(tmp_path: Path) -> None:
    import anyio
    from mcp import Client

    from noisett_mcp.server import build_server
    from noisett_mcp.service import Noisett

    async def tool_names() -> list[str]:
        service = Noisett(Settings(model="demo", data_dir=tmp_path, preload=False))
        async with service, Client(build_server(service, local_files=True)) as client:
            return [tool.name for tool in (await client.list_tools()).tools]

    names = anyio.run(tool_names)
    first = README.split("\n\n")[1]
    words = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    assert f"server with {words[len(names)]} tools" in first, first
    assert all(f"`{name}`" in first for name in names), (names, first)

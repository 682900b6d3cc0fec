"""docs/architecture.md is kept true by the code: the imports of `src/noisett_mcp` (type-only and
function-level ones included) break none of the page's "Never" rules, form no cycle, and every module
belongs to a room the page names. The rules are read from the page's table, so page and code cannot drift.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "noisett_mcp"
PAGE = REPO / "docs" / "architecture.md"
# The MCP surface's folders: the page names the room, not each file, so their files may change freely.
FOLDER_ROOMS = {"tools/", "resources/", "prompts/", "app/"}
PACKAGE_ROOM = "noisett_mcp"  # the package's own __init__.py (its __version__)


@dataclass(frozen=True)
class Room:
    names: tuple[str, ...]  # `cli.py`, `jobs/`, `noisett_mcp`, as the first column writes them
    holds: str
    never: frozenset[str]


def read_rooms(page: str = PAGE.read_text(encoding="utf-8")) -> list[Room]:
    """The rows of the table under '## The rooms'."""
    section = page.split("## The rooms", 1)[1].split("\n## ", 1)[0]
    rooms = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("Room", "---"):
            continue
        rooms.append(
            Room(
                names=tuple(re.findall(r"`([^`]+)`", cells[0])),
                holds=cells[1],
                never=frozenset(re.findall(r"`([^`]+)`", cells[2])),
            )
        )
    return rooms


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its folder's name)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def room_of(module: str) -> str:
    """`noisett_mcp.jobs.base` → `jobs/`; `noisett_mcp.service` → `service.py`; the package → itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return PACKAGE_ROOM
    if len(parts) > 2 or (PACKAGE / parts[1]).is_dir():
        return f"{parts[1]}/"
    return f"{parts[1]}.py"


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports anywhere in its body: at the top, under TYPE_CHECKING,
    or inside a function. `from noisett_mcp.x import y` counts as importing module `x.y` when that is a
    module, else `x`."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "noisett_mcp" and (target := known(name)) is not None:
                found.add(target)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(package)
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def forbidden_arrows(graph: dict[str, set[str]], rooms: list[Room]) -> list[str]:
    never = {name: room.never for room in rooms for name in room.names}
    return sorted(
        f"{module} → {target}  ({room_of(module)} never imports {room_of(target)})"
        for module, targets in graph.items()
        for target in targets
        if room_of(target) in never.get(room_of(module), ())
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each a cycle or several."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while (top := stack.pop()) != module:
                group.append(top)
            if group:
                found.append(sorted([module, *group]))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def unnamed_modules(modules: dict[str, Path], rooms: list[Room]) -> list[str]:
    """Modules whose room the page does not name, or which a named folder room's row does not list."""
    by_name = {name: room for room in rooms for name in room.names}
    missing = []
    for module, path in modules.items():
        room = room_of(module)
        if room not in by_name:
            missing.append(f"{module} (room {room} is not in the table)")
            continue
        listed = room in FOLDER_ROOMS or path.name == "__init__.py" or f"`{path.name}`" in by_name[room].holds
        if room.endswith("/") and not listed:
            missing.append(f"{module} ({room}'s row does not name `{path.name}`)")
    return missing


def test_the_page_has_a_row_for_each_room_with_rules_that_name_rooms() -> None:
    rooms = read_rooms()
    named = {name for room in rooms for name in room.names}
    assert {"service.py", "jobs/", "gpu/", "engine/", "tools/", "resources/", "prompts/", "app/"} <= named
    unknown = {rule for room in rooms for rule in room.never} - named
    assert not unknown, f"the Never column names rooms the table does not have: {sorted(unknown)}"


def test_no_import_crosses_a_line_the_page_forbids() -> None:
    arrows = forbidden_arrows(import_graph(), read_rooms())
    assert not arrows, "imports that docs/architecture.md forbids:\n" + "\n".join(arrows)


def test_no_import_cycle_type_only_imports_included() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" ↔ ".join(group) for group in found)


def test_every_module_is_named_on_the_page() -> None:
    missing = unnamed_modules(module_names(), read_rooms())
    assert not missing, "modules docs/architecture.md does not name:\n" + "\n".join(missing)


def test_only_the_gpu_room_and_the_cli_import_the_engine() -> None:
    """The command line's own bodies (commands/) build the demo model and train styles: torch work that
    runs in the CLI process, never behind the MCP surface."""
    importers = {
        room_of(module)
        for module, targets in import_graph().items()
        for target in targets
        if room_of(target) == "engine/"
    }
    assert importers <= {"engine/", "gpu/", "cli.py", "commands/"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import noisett_mcp.jobs.base\n", {"noisett_mcp.jobs.base"}),
        ("from noisett_mcp.jobs import base\n", {"noisett_mcp.jobs.base"}),
        ("from noisett_mcp.jobs.base import Job\n", {"noisett_mcp.jobs.base"}),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from noisett_mcp.gpu import runner\n",
            {"noisett_mcp.gpu.runner"},
        ),
        ("def f():\n    from noisett_mcp.engine.pipeline import Engine\n", {"noisett_mcp.engine.pipeline"}),
        ("from noisett_mcp import __version__\n", {"noisett_mcp"}),
        ("import json\nfrom . import sibling\n", set()),
    ],
)
def test_imports_are_found_wherever_they_are_written(tmp_path: Path, source: str, expected: set[str]) -> None:
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert imports_of(path, module_names()) == expected


def test_a_forbidden_arrow_a_cycle_and_an_unnamed_module_are_each_caught() -> None:
    rooms = [
        Room(("jobs/",), "`base.py`", frozenset({"gpu/"})),
        Room(("gpu/",), "`runner.py`", frozenset()),
    ]
    graph = {
        "noisett_mcp.jobs.base": {"noisett_mcp.gpu.runner"},
        "noisett_mcp.gpu.runner": {"noisett_mcp.jobs.base"},
    }
    assert forbidden_arrows(graph, rooms) == [
        "noisett_mcp.jobs.base → noisett_mcp.gpu.runner  (jobs/ never imports gpu/)"
    ]
    assert cycles(graph) == [["noisett_mcp.gpu.runner", "noisett_mcp.jobs.base"]]
    modules = {
        "noisett_mcp.jobs.local": PACKAGE / "jobs" / "local.py",
        "noisett_mcp.upkeep": PACKAGE / "upkeep.py",
    }
    assert unnamed_modules(modules, rooms) == [
        "noisett_mcp.jobs.local (jobs/'s row does not name `local.py`)",
        "noisett_mcp.upkeep (room upkeep.py is not in the table)",
    ]

"""The HTTP server's repeat filter (issue 22, finding 8): it must fold one warning repeated per socket, and
never hide a different warning that shares its template. Before the fix, after one style refusal no
other style's refusal was logged for a minute. Real catalog, real log records, the filter as `serve`
installs it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from noisett_mcp.config import Settings
from noisett_mcp.serving import RepeatFilter
from noisett_mcp.styles.catalog import StyleCatalog
from tests.support import add_style

pytestmark = pytest.mark.faults


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def test_two_different_style_refusals_within_the_window_are_both_logged(
    settings: Settings, tmp_path: Path, kept: Kept
) -> None:
    folder = tmp_path / "styles"
    add_style(folder, "first", None)  # no weights next to it: refused
    catalog = StyleCatalog(settings, folder)
    catalog.refresh()
    add_style(folder, "second", None)
    catalog.refresh()

    refusals = [line for line in kept.lines if "refused" in line]
    assert any("first.toml" in line for line in refusals), kept.lines
    assert any("second.toml" in line for line in refusals), kept.lines


def test_the_same_warning_repeated_is_still_folded_into_one_line(kept: Kept) -> None:
    noisy = logging.getLogger("asyncio")
    for _ in range(50):
        noisy.error("socket.accept() out of system resource\nsocket: <socket fd=%d>", 7)
    assert len([line for line in kept.lines if "socket.accept()" in line]) == 1

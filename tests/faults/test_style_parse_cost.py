"""What a style manifest may cost to parse (issue 22, finding 5), on the real catalog and a real MCP session
in memory. tomllib is quadratic in the parts of one dotted key: 32,000 parts (64 kB, under the manifest
cap) cost 18 s of CPU per parse, and every concurrent cache miss parsed again. The tests count the
parser's calls (the real tomllib, counted): once per file version, and never for a key past the bound."""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from noisett_mcp.config import Settings
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.styles.keys import MAX_KEY_PARTS
from noisett_mcp.styles.manifest import DEMO_STYLES_DIR
from tests.support import add_style

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

LORA = DEMO_STYLES_DIR / "demo-flat.safetensors"
MISSES = 8


class CountedParser:
    """tomllib.loads, counted. Each call waits (up to 2 s) for a second one to start, so that concurrent
    misses overlap inside the parser whenever the catalog lets them."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.texts: list[str] = []
        self._lock = threading.Lock()
        self._second = threading.Event()

    def __call__(self, text: str, **kwargs: Any) -> Any:
        with self._lock:
            self.texts.append(text)
            if len(self.texts) >= 2:
                self._second.set()
        self._second.wait(2)
        return self.real(text, **kwargs)


@pytest.fixture
def parser(monkeypatch: pytest.MonkeyPatch) -> CountedParser:
    counted = CountedParser(tomllib.loads)
    monkeypatch.setattr(tomllib, "loads", counted)
    return counted


def test_concurrent_misses_parse_each_manifest_version_once(
    settings: Settings, tmp_path: Path, parser: CountedParser
) -> None:
    folder = tmp_path / "styles"
    add_style(folder, "one", LORA)
    catalog = StyleCatalog(settings, folder)
    views: list[set[str]] = []
    threads = [
        threading.Thread(target=lambda: views.append(set(catalog.refresh().styles))) for _ in range(MISSES)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert views == [{"one"}] * MISSES
    assert len(parser.texts) == 1, f"{MISSES} concurrent misses parsed the manifest {len(parser.texts)} times"
    add_style(folder, "one", LORA, title="A new version")  # a new version is parsed again, once
    assert catalog.refresh().styles["one"].manifest.title == "A new version"
    assert len(parser.texts) == 2


async def test_a_key_with_too_many_dotted_parts_is_refused_before_the_parser_sees_it(
    client: Client, settings: Settings, parser: CountedParser
) -> None:
    folder = settings.resolved_styles_dir
    add_style(folder, "good", LORA)
    dotted = "x" + ".x" * 3999 + " = 1\n"  # 8 kB; 32,000 parts cost 18 s before the bound
    (folder / "dotted.toml").write_text(dotted)

    listed = await client.call_tool("list_styles", {})
    assert not listed.is_error, listed.content[0].text
    assert "good" in {style["name"] for style in listed.structured_content["styles"]}
    refused = await client.call_tool(
        "generate_image", {"prompt": "a lighthouse", "style": "dotted", "steps": 1}
    )
    assert refused.is_error
    message = refused.content[0].text
    assert "dotted.toml" in message and "4000 dotted parts" in message, message
    assert f"the most a manifest key may have is {MAX_KEY_PARTS}" in message, message
    assert not [text for text in parser.texts if text.startswith("x.x")], "tomllib parsed the dotted key"

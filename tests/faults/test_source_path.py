"""`source_path` over stdio (issue 22, finding 10), through a real MCP session with local files on, as
`serve` builds it for stdio: only regular files are read, a FIFO is refused at once rather than holding a
thread until a writer comes, and for a path that cannot be used the answer is one message, whatever the
reason (missing, a pipe, too big, not an image), so that it says nothing more about the path than
needed."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client
from PIL import Image

from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from noisett_mcp.sources import MAX_SOURCE_BYTES
from tests.faults.common import Fifos

pytestmark = [pytest.mark.anyio, pytest.mark.faults]


@pytest.fixture
async def local(service: Noisett) -> AsyncIterator[Client]:
    async with Client(build_server(service, local_files=True)) as client:
        yield client


async def refusal(client: Client, path: Path) -> str:
    arguments = {"prompt": "a harbour", "steps": 1, "source_path": str(path), "strength": 0.5}
    result = await client.call_tool("generate_image", arguments)
    assert result.is_error, result.structured_content
    # The message names the path tried (its absolute form too); every reason reads the same apart from it.
    return result.content[0].text.replace(repr(str(path)), "PATH").replace(str(path.absolute()), "ABSOLUTE")


async def test_a_fifo_is_refused_at_once_and_unusable_paths_all_answer_alike(
    local: Client, tmp_path: Path, fifos: Fifos
) -> None:
    pipe = fifos.make(tmp_path / "photo.png")
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(MAX_SOURCE_BYTES + 1)  # sparse
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")

    answers = {
        "pipe": await refusal(local, pipe),
        "missing": await refusal(local, tmp_path / "missing.png"),
        "folder": await refusal(local, tmp_path),
        "too big": await refusal(local, big),
        "not an image": await refusal(local, text),
    }
    assert not fifos.fired, "reading source_path blocked on the FIFO (released by the watchdog)"
    assert len(set(answers.values())) == 1, answers
    assert "PNG, JPEG or WebP" in answers["pipe"] and "10 MiB" in answers["pipe"], answers["pipe"]

    good = tmp_path / "good.png"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(buffer, "PNG")
    good.write_bytes(buffer.getvalue())
    arguments = {"prompt": "a harbour", "steps": 1, "source_path": str(good), "strength": 0.5}
    made = await local.call_tool("generate_image", arguments)
    assert not made.is_error, made.content[0].text

"""`noisett-mcp generate`: make images from the shell, with a progress bar, and print where each went.

Its messages name its own flags (`--source`, `PROMPT`), not the MCP tool's parameters, and every path is
read from the folder the user runs it in.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import anyio
from pydantic_core import ErrorDetails

from noisett_mcp.config import Settings
from noisett_mcp.schemas import MAX_PROMPT_CHARS, GenerationRequest


def generate(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    try:
        request = GenerationRequest(**{name: getattr(args, name) for name in GenerationRequest.model_fields})
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            print(f"error: {_request_problem(error)}", file=sys.stderr)
        return 2
    problem = _source_problem(args) or (_out_problem(args.out) if args.out is not None else None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2  # before any rendering
    if args.out is not None:
        args.out = args.out.absolute()  # `copied to` says where, wherever the user stands
    return anyio.run(_render, args, settings, request)


async def _render(args: argparse.Namespace, settings: Settings, request: GenerationRequest) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from noisett_mcp import sources
    from noisett_mcp.errors import NoisettError
    from noisett_mcp.service import Noisett

    async with Noisett(settings) as service:
        try:
            source = sources.from_path(str(args.source), what="--source") if args.source else None
            job = await service.submit(request, source_image=source)
        except NoisettError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        # Log lines go above the bar, not into it.
        with logging_redirect_tqdm(), tqdm(total=job.total_steps, unit="step", file=sys.stderr) as bar:

            async def report(done: float, total: float, message: str) -> None:
                bar.set_description(message)
                bar.update(int(done) - bar.n)

            await service.wait(job, float("inf"), report)
        if job.status != "done":
            print(f"error: generation {job.status}: {job.error}", file=sys.stderr)
            return 1
        status = 0
        for image_id in job.image_ids:
            view = await service.view(image_id)
            path = _file_path(view.info.url)
            # Where it was saved comes first, so that it is printed even when the copy fails.
            print(f"{path or view.info.url}  seed={view.info.seed} {view.info.width}x{view.info.height}")
            if args.out and path:
                try:
                    print(f"  copied to {_copy_out(path, args.out)}")
                except OSError as exc:
                    print(f"error: could not copy it into --out {args.out}: {exc}", file=sys.stderr)
                    status = 1
        return status


def _request_problem(problem: ErrorDetails) -> str:
    """A validation error of GenerationRequest in the CLI's words: its flag, and what is allowed."""
    field = str(problem["loc"][0]) if problem["loc"] else ""
    flag = "PROMPT" if field == "prompt" else "--" + field.replace("_", "-")
    given = problem.get("input")
    if problem["type"] == "string_too_short":
        return f"{flag} is empty: say what the image shows, in 1 to {MAX_PROMPT_CHARS} characters"
    if problem["type"] == "string_too_long":
        return f"{flag} has {len(given)} characters; the most allowed is {problem['ctx']['max_length']}"
    if problem["type"].startswith(("greater_than", "less_than")) and (bounds := _bounds(field)):
        return f"{flag} {given}: allowed {bounds[0]} to {bounds[1]}"
    return f"{flag} {given}: {problem['msg']}"


def _bounds(field: str) -> tuple[object, object] | None:
    """The lowest and highest values a numeric field of GenerationRequest allows."""
    info = GenerationRequest.model_fields.get(field)
    metadata = info.metadata if info else []
    low = next((m.ge for m in metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in metadata if hasattr(m, "le")), None)
    return None if low is None or high is None else (low, high)


def _source_problem(args: argparse.Namespace) -> str | None:
    """The source flags that contradict each other, or a --source that is not a file here. A good
    --source is made absolute in `args`: read from the user's folder, whatever runs it later."""
    if args.source and args.source_image_id:
        return "give one source image: --source FILE or --source-image-id ID, not both"
    if args.strength is not None and not (args.source or args.source_image_id):
        return "--strength applies only with a source image: add --source FILE or --source-image-id ID"
    if args.source:
        path = Path(args.source).expanduser().absolute()
        if not path.is_file():
            return f"--source {args.source}: no such file ({path})"
        args.source = path
    return None


def _out_problem(folder: Path) -> str | None:
    """Why images could not be copied into `folder` (made if missing), or None."""
    shown = f"--out {folder}" + ("" if folder.is_absolute() else f" ({folder.absolute()})")
    if folder.exists() and not folder.is_dir():
        return f"{shown}: is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{shown}: cannot make that folder ({exc.strerror or exc})"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{shown}: is not writable"
    return None


def _copy_out(path: Path, folder: Path) -> Path:
    """Copy a stored image into `folder` as a new file of the user's (umask) mode: the store keeps its
    files private (0600), but a copy asked for by name is the user's to share."""
    target = folder / path.name
    target.unlink(missing_ok=True)  # a file left from before would keep its own mode
    shutil.copyfile(path, target)
    return target


def _file_path(url: str | None) -> Path | None:
    if url and url.startswith("file:"):
        return Path(url2pathname(urlparse(url).path))
    return None

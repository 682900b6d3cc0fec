"""`noisett-mcp styles check`: validate style manifests and their weights as the server would. Without a
folder it checks what the server offers: the styles folder and, for the demo model, the built-in demo
styles beside it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from noisett_mcp.config import Settings
from noisett_mcp.styles.manifest import DEMO_STYLES_DIR


def styles_check(args: argparse.Namespace, settings: Settings) -> int:
    logging.getLogger("noisett_mcp.styles").setLevel(logging.ERROR)  # the report below says it all
    folder = args.dir or settings.resolved_styles_dir
    if args.dir is not None and not folder.is_dir():
        print(f"error: {folder} is not a folder of style manifests", file=sys.stderr)
        return 2
    folders = [folder] if folder.is_dir() else []
    if args.dir is None and not folder.exists():  # a fresh install: no styles of the user's yet
        print(
            f"no styles folder yet: {folder} does not exist. Put a style's manifest (NAME.toml) and weights "
            "(NAME.safetensors) there, or set NOISETT_STYLES_DIR, or check a folder: noisett-mcp styles "
            "check DIR (the repository's loras/ has an example manifest; loras/README.md the format)"
        )
    if args.dir is None and settings.is_demo:
        folders.append(DEMO_STYLES_DIR)  # offered with the demo model (a styles-folder style of a name wins)
    refused = 0
    for checked in folders:
        status = _check(args, settings, checked)
        if status == 2:
            return 2
        refused += status
    return 1 if refused else 0


def _check(args: argparse.Namespace, settings: Settings, folder: Path) -> int:
    """Print one line per manifest in `folder` and a summary; 1 if one is refused, 2 if none could be."""
    from noisett_mcp.styles.check import check_folder

    try:
        model_folder = None
        if settings.is_demo and not args.no_keys:
            from noisett_mcp.engine.demo import write_demo_model  # builds it once (torch)

            model_folder = write_demo_model(settings.demo_model_dir)
        results = check_folder(settings, folder, keys=not args.no_keys, model_folder=model_folder)
    except Exception as exc:  # the model's weight names could not be read
        print(f"error: cannot read the model's transformer ({exc}); try --no-keys", file=sys.stderr)
        return 2
    for result in results:
        label = "other" if result.status == "skipped" else result.status
        print(f"{label:8} {result.source.name}: {result.detail}")
    counts = {status: sum(r.status == status for r in results) for status in ("ok", "warning", "refused")}
    other = len(results) - sum(counts.values())
    where = f"{folder} (built in, offered with the demo model)" if folder == DEMO_STYLES_DIR else str(folder)
    print(
        f"{len(results)} manifest(s) in {where} for {settings.model}: {counts['ok']} ok, "
        f"{counts['warning']} with warnings, {counts['refused']} refused, {other} for other models"
    )
    return 1 if counts["refused"] else 0

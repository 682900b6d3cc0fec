"""Command line: `noisett-mcp serve | worker | generate | demo-model | styles check | styles train |
model prepare`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import anyio

from noisett_mcp import __version__, telemetry
from noisett_mcp.commands import INTERRUPTED, exit_now
from noisett_mcp.commands.generate import generate
from noisett_mcp.commands.preflight import has_nvidia_driver, render_problems
from noisett_mcp.commands.styles import styles_check
from noisett_mcp.commands.train import add_train_command
from noisett_mcp.config import Settings
from noisett_mcp.errors import needs_azure_storage
from noisett_mcp.schemas import ASPECT_RATIOS, MAX_PROMPT_CHARS
from noisett_mcp.telemetry import configure_logging

log = logging.getLogger("noisett_mcp")

STDIO_IDLE_UNLOAD_SECONDS = 600.0


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # a typo'd option: show the usage of the command it was given to
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        sys.exit(2)
    overrides = {"model": args.model} if getattr(args, "model", None) else {}
    settings = _settings(overrides)
    if settings.device.startswith("cuda") and not has_nvidia_driver():
        # Cheap, before torch: no NVIDIA driver library at all (the engine checks torch's view too).
        _fail(
            f"NOISETT_DEVICE={settings.device}, but this machine has no NVIDIA driver (libcuda): "
            "set NOISETT_DEVICE=auto or cpu"
        )
    # A front (NOISETT_QUEUE=azure) leaves the model to its GPU workers.
    renders_here = args.run is _worker or (args.run in (_serve, generate) and settings.queue == "local")
    if renders_here and (problems := render_problems(settings, model_flag=bool(overrides))):
        print("\n".join(f"error: {problem}" for problem in problems), file=sys.stderr)
        sys.exit(2)
    # Logs go to stderr (on stdio, stdout belongs to the MCP protocol), with secrets redacted.
    configure_logging(settings.log_level, settings.log_format)
    try:
        status = args.run(args, settings) or 0
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling starts: no traceback
        print("interrupted", file=sys.stderr)
        exit_now(INTERRUPTED)
    sys.exit(status)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _settings(overrides: dict[str, Any]) -> Settings:
    """Every setting, checked before any work: a bad value exits 2 with one line per variable."""
    from pydantic import ValidationError

    from noisett_mcp.config import env_name

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for problem in exc.errors(include_url=False):
            field = str(problem["loc"][0]) if problem["loc"] else ""
            name = env_name(field) if field in Settings.model_fields else field
            secret = "secret" in str(Settings.model_fields[field].annotation).lower() if field else False
            value = "(hidden)" if secret else repr(problem.get("input"))
            print(f"error: {name}={value}: {problem['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="noisett-mcp",
        description="Brand-style image generation for AI assistants (an MCP server for HiDream-I1).",
    )
    parser.add_argument("--version", action="version", version=f"noisett-mcp {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the MCP server", description="Run the MCP server.")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio", help="default: stdio")
    serve.add_argument("--host", help="HTTP bind address (default: NOISETT_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default: NOISETT_PORT or 8000)")
    serve.add_argument("--model", help="override NOISETT_MODEL (`demo` for the tiny offline model)")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve HTTP beyond this machine without Entra auth (only behind a gateway that authenticates)",
    )
    serve.set_defaults(command_parser=serve, run=_serve)

    worker = commands.add_parser(
        "worker",
        help="run a GPU worker for an Azure Storage queue",
        description="Take generation jobs from the Azure Storage queue (NOISETT_QUEUE_NAME) that `serve` "
        "fronts with NOISETT_QUEUE=azure, render them, and store the images in Blob storage.",
    )
    worker.add_argument("--model", help="override NOISETT_MODEL")
    worker.add_argument(
        "--health-port", type=int, help="port of the worker's /healthz (default: NOISETT_WORKER_HEALTH_PORT)"
    )
    worker.set_defaults(command_parser=worker, run=_worker)

    gen = commands.add_parser(
        "generate",
        help="make images from the shell",
        description="Make images from the shell, with a progress bar; prints where each image went.",
    )
    gen.add_argument(
        "prompt", metavar="PROMPT", help=f"what the image shows (1 to {MAX_PROMPT_CHARS} characters)"
    )
    gen.add_argument("--negative-prompt", default="", help="what the image must not show")
    gen.add_argument("--style", default="none", help="a brand style (see list_styles); default: none")
    gen.add_argument("--style-strength", type=float, help="0 to 2; default: the style's own strength")
    gen.add_argument("--aspect-ratio", choices=list(ASPECT_RATIOS), default="1:1")
    gen.add_argument("--seed", type=int, help="seed for reproducible results")
    gen.add_argument("--steps", type=int, help="denoising steps (default: per model variant)")
    gen.add_argument("--guidance", type=float, help="guidance scale (default: per model variant)")
    gen.add_argument("--count", type=int, default=1, choices=range(1, 5), metavar="{1..4}")
    gen.add_argument("--format", choices=["png", "webp", "jpeg"], default="png")
    gen.add_argument("--source", help="start from this image file (PNG, JPEG or WebP) instead of noise")
    gen.add_argument("--source-image-id", help="start from a stored image, by id")
    gen.add_argument("--strength", type=float, help="with a source: 0 keeps it, 1 ignores it; default 0.6")
    gen.add_argument("--out", type=Path, help="also copy the images into this folder")
    gen.add_argument("--model", help="override NOISETT_MODEL (`demo` for the tiny offline model)")
    gen.set_defaults(command_parser=gen, run=generate)

    demo = commands.add_parser(
        "demo-model",
        help="write the tiny offline demo pipeline to a folder",
        description="Write the tiny random-weight HiDream pipeline (used by NOISETT_MODEL=demo) to DIR.",
    )
    demo.add_argument("dir", type=Path)
    demo.set_defaults(command_parser=demo, run=_demo_model)

    styles = commands.add_parser("styles", help="work with brand styles", description="Brand styles.")
    styles_commands = styles.add_subparsers(title="commands", metavar="COMMAND")
    check = styles_commands.add_parser(
        "check",
        help="validate style manifests and weights",
        description="Validate every style manifest in DIR and its weights, as the server would, before "
        "shipping them. Exits 1 if any style is refused.",
    )
    check.add_argument("dir", type=Path, nargs="?", help="styles folder (default: NOISETT_STYLES_DIR)")
    check.add_argument("--model", help="the model the styles are for (default: NOISETT_MODEL)")
    check.add_argument(
        "--no-keys",
        action="store_true",
        help="skip matching adapter keys against the model's transformer (that reads its weight names)",
    )
    check.set_defaults(command_parser=check, run=styles_check)
    add_train_command(styles_commands)

    from noisett_mcp.commands import model

    model.register(commands)
    return parser


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from noisett_mcp.service import Noisett

    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    if args.transport == "http" and (problem := _http_auth_problem(settings, args.insecure_no_auth)):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if settings.queue == "azure" and not settings.blob_enabled:
        print(
            f"error: {needs_azure_storage('NOISETT_QUEUE=azure (the queue and the images)')}", file=sys.stderr
        )
        return 2
    telemetry.setup(settings)  # Azure Monitor when its connection string is set; otherwise nothing
    if args.transport == "stdio" and settings.idle_unload_seconds is None:
        settings.idle_unload_seconds = STDIO_IDLE_UNLOAD_SECONDS  # a desktop: a few images an hour
    service = Noisett(settings)
    if args.transport == "stdio":
        from noisett_mcp.commands.stdio import serve_stdio

        serve_stdio(service)
        return 0

    import uvicorn

    from noisett_mcp.http import create_app
    from noisett_mcp.serving import install_repeat_filter, raise_descriptor_limit, uvicorn_options

    install_repeat_filter()  # one line per kind of error per minute, not one per socket
    soft, _ = raise_descriptor_limit()
    if soft <= settings.http_max_connections + 64:
        log.warning(
            "the open-file limit (%d) leaves little room above NOISETT_HTTP_MAX_CONNECTIONS (%d): lower the "
            "setting or raise the limit (ulimit -n)",
            soft,
            settings.http_max_connections,
        )
    # log_config=None: uvicorn's records go through our handler (JSON, redaction) like everyone else's.
    uvicorn.run(
        create_app(service),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        **uvicorn_options(settings),
    )
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.blob_enabled:
        print(
            f"error: {needs_azure_storage('noisett-mcp worker (the queue and the images)')}", file=sys.stderr
        )
        return 2
    from noisett_mcp.gpu.worker import serve_worker

    telemetry.setup(settings)
    port = args.health_port if args.health_port is not None else settings.worker_health_port
    anyio.run(serve_worker, settings, port)
    return 0


def _http_auth_problem(settings: Settings, insecure: bool) -> str | None:
    """Why HTTP must not start with these settings: an open endpoint is for this machine only."""
    from noisett_mcp.auth.config import EntraConfig
    from noisett_mcp.http import is_loopback

    try:
        EntraConfig.from_settings(settings)
    except ValueError as exc:
        return str(exc)
    if settings.auth_enabled or is_loopback(settings.host):
        return None
    if insecure:
        print(
            f"WARNING: --insecure-no-auth: serving HTTP on {settings.host}:{settings.port} with NO "
            "authentication.\nWARNING: anyone who can reach this port can use the GPU and fetch every image. "
            "Use it only behind a gateway that authenticates callers.",
            file=sys.stderr,
        )
        return None
    return (
        f"refusing to serve HTTP on {settings.host} without authentication: anyone who can reach it could "
        "use the GPU and fetch every image. Set AZURE_AD_TENANT_ID and AZURE_AD_CLIENT_ID (see the README's "
        "Microsoft Entra ID section), serve on 127.0.0.1, or pass --insecure-no-auth if a gateway in front "
        "already authenticates callers."
    )


def _demo_model(args: argparse.Namespace, settings: Settings) -> int:
    from noisett_mcp.engine.demo import write_demo_model

    print(write_demo_model(args.dir))
    return 0

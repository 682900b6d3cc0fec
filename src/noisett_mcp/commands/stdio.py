"""`noisett-mcp serve` over stdio: the MCP server a client such as Claude Desktop starts as a process.

Two things a person at a terminal meets: the server waits silently for JSON-RPC on stdin, and it cannot
stop cleanly on Ctrl-C, because the SDK reads stdin in a worker thread that nothing can interrupt (a
cancelled task waits for that read, so the first Ctrl-C did nothing and the second left a traceback).
So on a terminal it says what it waits for, and on SIGINT it exits at once, as it does when the client
closes stdin while the model loads.
"""

from __future__ import annotations

import signal
import sys

import anyio

from noisett_mcp.commands import INTERRUPTED, exit_now
from noisett_mcp.service import Noisett

WAITING = (
    "noisett-mcp: serving MCP over stdio, waiting for an MCP client to speak on stdin (this is not a prompt; "
    "a client such as Claude Desktop starts this command itself). Ctrl-C stops it."
)


def serve_stdio(service: Noisett) -> None:
    """Serve MCP on stdin and stdout until the client closes stdin or the user presses Ctrl-C."""
    from noisett_mcp.server import build_server

    # Asked now: while it serves, the SDK points fd 0 at the null device (stray reads get EOF).
    on_a_terminal = sys.stdin.isatty()

    async def run() -> None:
        async with service, anyio.create_task_group() as tasks:
            tasks.start_soon(_exit_on_interrupt, on_a_terminal)
            await build_server(service, local_files=True).run_stdio_async()
            tasks.cancel_scope.cancel()

    anyio.run(run)
    if service.runner is not None and service.runner.engine_state == "loading":
        # The client closed stdin while the model loads, in a thread nothing can interrupt: exit now
        # (clients restart servers often) instead of at the end of the load.
        exit_now(0)


async def _exit_on_interrupt(on_a_terminal: bool) -> None:
    """Exit at the first Ctrl-C; on a terminal, say first (once Ctrl-C works) what the server waits for."""
    if sys.platform == "win32":  # asyncio has no signal handlers there: Python's KeyboardInterrupt stays
        _tell_a_person(on_a_terminal)
        await anyio.sleep_forever()
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        _tell_a_person(on_a_terminal)
        async for _ in signals:
            exit_now(INTERRUPTED)


def _tell_a_person(on_a_terminal: bool) -> None:
    if on_a_terminal:  # a client's stdin is a pipe
        print(WAITING, file=sys.stderr, flush=True)

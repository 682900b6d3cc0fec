"""The bodies of the `noisett-mcp` commands and the checks made before them; cli.py parses and dispatches."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys

INTERRUPTED = 128 + signal.SIGINT  # what a shell reports for a process ended by Ctrl-C (130)


def exit_now(status: int) -> None:
    """Exit without waiting for threads nothing can interrupt (a stdin read, a model load); logs and
    stdout flushed first."""
    logging.shutdown()
    with contextlib.suppress(OSError, ValueError):  # the client closed its end
        sys.stdout.flush()
    os._exit(status)

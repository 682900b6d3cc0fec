"""uvicorn for `serve --transport http`, bounded against slow and abusive clients.

uvicorn bounds a connection's idle time between requests (`timeout_keep_alive`) and the size of a request
head (`h11_max_incomplete_event_size`), but not the time a client may take to send that head, and its
`limit_concurrency` answers 503 only once a whole request head has arrived: half-sent requests keep their
sockets forever. 600 of them exhausted the process's file descriptors, after which every `accept()`
failed and asyncio logged "Too many open files" for each try. So the protocol here:
- closes a connection whose request head is not complete `NOISETT_HTTP_HEADER_TIMEOUT` seconds after it
  opened (or after its previous response);
- answers 503 and closes at once past `NOISETT_HTTP_MAX_CONNECTIONS` open connections, before the process
  runs out of descriptors;
- keeps a quarter of that cap for connections that have sent a whole request head: past the other three
  quarters, connections waiting for a head (a new one, or an idle keep-alive one) are closed, the one
  that has waited longest first. A client that holds half-sent requests open, reopening each as it is
  closed, then only ever evicts its own oldest sockets: a complete request, a health probe among them,
  arrives whole within milliseconds and always finds room;
and `RepeatFilter` logs an error that repeats per socket once per minute, with a count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from noisett_mcp.config import Settings

# Request heads up to this size (uvicorn's h11 default is 16 KiB); an Entra token with many group ids
# fits with room to spare.
MAX_HEAD_BYTES = 64 * 1024
REPEAT_INTERVAL_SECONDS = 60.0
_BUSY_TEXT = b"too many open connections; retry shortly"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT)
)

log = logging.getLogger(__name__)


class BoundedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol with a deadline on each request head and a cap on open connections."""

    header_timeout: float = 10.0
    max_connections: int = 512
    # The connections of one server waiting for a request head, the longest-waiting first (a dict keeps
    # insertion order); `uvicorn_options` gives each server class its own.
    waiting: ClassVar[dict[BoundedHTTPProtocol, None]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    @property
    def max_waiting(self) -> int:
        """Connections that may wait for a request head at once: the cap less a quarter kept for the rest."""
        return max(1, self.max_connections - max(1, self.max_connections // 4))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            # Refuse before reading anything: the descriptor is freed now, not when the client gives up.
            _repeats.note(
                "refused a connection: %d open, NOISETT_HTTP_MAX_CONNECTIONS is %d",
                len(self.connections),
                self.max_connections,
            )
            self.transport.write(_BUSY)
            self.transport.close()
            return
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_for_head():
            self._arm_head_deadline()
        else:
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm_head_deadline()  # idle now: uvicorn's keep-alive timeout takes over

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        cycle = self.cycle
        return cycle is None or bool(cycle.response_complete)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:  # from the first byte (or the open), never pushed back by more bytes
            self._head_deadline = self.loop.call_later(self.header_timeout, self._head_timed_out)
            self.waiting[self] = None
            self._evict_longest_waiting()

    def _disarm_head_deadline(self) -> None:
        self.waiting.pop(self, None)
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _evict_longest_waiting(self) -> None:
        """Past `max_waiting`, close the connections that have waited longest for a request head."""
        while len(self.waiting) > self.max_waiting:
            oldest = next(iter(self.waiting))
            if oldest is self:
                break
            _repeats.note(
                "closed the connection waiting longest for a request head: %d were waiting, the most is %d "
                "(a quarter of NOISETT_HTTP_MAX_CONNECTIONS is kept for complete requests)",
                len(self.waiting),
                self.max_waiting,
            )
            oldest._disarm_head_deadline()
            oldest.transport.close()

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self._waiting_for_head() and not self.transport.is_closing():
            _repeats.note("closed a connection that sent no whole request head in %g s", self.header_timeout)
            self.transport.close()


class _Repeats:
    """Logs one line per kind of event per interval, with the count since the last line."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def note(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        last, count = self._last.get(msg, (0.0, 0))
        if now - last < REPEAT_INTERVAL_SECONDS and last:
            self._last[msg] = (last, count + 1)
            return
        self._last[msg] = (now, 0)
        suffix = f" (and {count} more like it in the last {REPEAT_INTERVAL_SECONDS:g} s)" if count else ""
        log.warning(msg + suffix, *args)


_repeats = _Repeats()


class RepeatFilter(logging.Filter):
    """Lets through the first warning or error of each kind (logger, message, exception type) per
    interval, and notes on the next one let through how many it held back. Under a flood of sockets,
    asyncio and uvicorn log the same failure once per socket: 147,000 lines in 30 s.

    The message is the whole formatted first line, not the template: two different style refusals share
    `"style %s: %s"`, and keyed on the template the second one was never logged."""

    def __init__(self, interval: float = REPEAT_INTERVAL_SECONDS, max_kinds: int = 1000) -> None:
        super().__init__()
        self.interval = interval
        self.max_kinds = max_kinds
        self._seen: dict[tuple[str, int, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        # The first line only: asyncio's messages carry a per-event handle or socket on the next lines.
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the template: the handler reports that itself
            message = str(record.msg)
        first_line = message.split("\n", 1)[0]
        key = (record.name, record.levelno, first_line, type(exc).__name__ if exc else "")
        now = time.monotonic()
        first, held = self._seen.get(key, (0.0, 0))
        if first and now - first < self.interval:
            self._seen[key] = (first, held + 1)
            return False
        if len(self._seen) >= self.max_kinds:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} [{held} more like this in the last {self.interval:g} s not logged]"
        return True


def install_repeat_filter() -> RepeatFilter:
    """Add one RepeatFilter to every handler of the root logger (uvicorn and asyncio log through it)."""
    repeat = RepeatFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeat)
    return repeat


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit (containers often start at a
    soft 1024 under a hard limit far above it); return (soft, hard) as they are now, or (-1, -1) where
    there is no such limit (Windows)."""
    try:
        import resource
    except ImportError:
        return -1, -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # some sandboxes refuse; the connection cap still holds
            log.info("could not raise the open-file limit from %d: %s", soft, exc)
    return soft, hard


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments for `uvicorn.run`/`uvicorn.Config` that bound what one client can hold."""
    protocol = type(
        "NoisettHTTPProtocol",
        (BoundedHTTPProtocol,),
        {
            "header_timeout": settings.http_header_timeout,
            "max_connections": settings.http_max_connections,
            "waiting": {},
        },
    )
    return {
        "http": protocol,
        # Past this many requests and connections in flight, uvicorn answers 503 itself; one more than
        # the connection cap, so that the cap, not uvicorn's count, is what refuses connections.
        "limit_concurrency": settings.http_max_connections + 1,
        "timeout_keep_alive": settings.http_keep_alive_seconds,
        "timeout_graceful_shutdown": settings.http_shutdown_seconds,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        # asyncio tries up to `backlog` accept() calls per wake-up, and when the process is out of
        # descriptors it fails (and logs) each one: keep the burst no larger than the connection cap.
        "backlog": min(2048, settings.http_max_connections),
    }

"""A TCP proxy in front of Azurite that hangs or throttles the requests a test picks.

Freezing the whole emulator (`Azurite.freeze`) hangs every request from that moment; a fault in the middle
of a transfer needs aim: this proxy forwards every request as it is, except those that `picks(head)`
selects while a fault is set, which it holds unanswered (`hang`: a Blob that stops answering) or answers
with Azure's `503 ServerBusy` (`throttle`). Plain threads and sockets on 127.0.0.1, each stopped by `close`.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Literal

Fault = Literal["hang", "throttle"]
THROTTLED = (
    b"HTTP/1.1 503 The server is busy.\r\nx-ms-error-code: ServerBusy\r\n"
    b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n"
)
HEAD_LIMIT = 64 * 1024


class StorageProxy:
    def __init__(self, upstream_port: int, picks: Callable[[str], bool]) -> None:
        self.upstream_port, self.picks = upstream_port, picks
        self.fault: Fault | None = None
        self.faulted = 0  # requests held or throttled so far
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="storage-proxy", daemon=True).start()

    def connection_string(self, azurite_connection_string: str) -> str:
        """Azurite's connection string with its Blob endpoint pointed at this proxy."""
        return azurite_connection_string.replace(f":{self.upstream_port}/", f":{self.port}/")

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sockets, self._sockets = [*self._sockets, self._listener], []
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        self._track(upstream)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        pending = b""
        try:
            while True:
                request, pending = _next_request(client, pending)
                if request is None:
                    return
                head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
                fault = self.fault
                if fault is None or not self.picks(head):
                    upstream.sendall(request)
                    continue
                self.faulted += 1
                if fault == "throttle":
                    client.sendall(THROTTLED)
                    continue
                self._closed.wait()  # hang: hold the request unanswered until the proxy closes
                return
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _next_request(sock: socket.socket, pending: bytes) -> tuple[bytes | None, bytes]:
    """One whole HTTP request (head and Content-Length body) from the client, and what follows it."""
    while b"\r\n\r\n" not in pending:
        if len(pending) > HEAD_LIMIT:
            return None, b""
        data = sock.recv(65536)
        if not data:
            return None, b""
        pending += data
    head, _, rest = pending.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    size = int(length.group(1)) if length else 0
    while len(rest) < size:
        data = sock.recv(65536)
        if not data:
            return None, b""
        rest += data
    return head + b"\r\n\r\n" + rest[:size], rest[size:]


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@contextmanager
def storage_proxy(upstream_port: int, picks: Callable[[str], bool]) -> Iterator[StorageProxy]:
    proxy = StorageProxy(upstream_port, picks)
    try:
        yield proxy
    finally:
        proxy.close()


def ranged_read_of(blob_path: str, *, reaching: int) -> Callable[[str], bool]:
    """Picks the GETs of `blob_path` whose range reaches byte `reaching` (a shard's tensors, not the
    8-byte length and JSON header that are read first)."""

    def picks(head: str) -> bool:
        line = head.split("\r\n", 1)[0]
        span = re.search(r"(?im)^x-ms-range:\s*bytes=(\d+)-(\d+)", head)
        return line.startswith("GET ") and blob_path in line and span is not None and int(span[2]) >= reaching

    return picks

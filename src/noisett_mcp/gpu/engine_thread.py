"""One thread for the engine: every call that touches the model runs on it, in order.

torch keeps state per calling thread (an OpenMP team, oneDNN and BLAS buffers), and malloc an arena per
allocating thread. Renders spread over anyio's pool of worker threads (up to 40, which come and go)
grew that state with every new thread: RSS climbed for thousands of jobs before it levelled off
(`python -m benchmarks.bench_faults`). On one long-lived thread it is made once.

It is a daemon thread, like anyio's workers, so a server whose client has gone exits without waiting
for a render to end.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None  # None: the thread ends


class EngineThread:
    def __init__(self, name: str = "noisett-engine") -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    async def run(self, function: Callable[..., T], *args: Any, abandon_on_cancel: bool = False) -> T:
        """`function(*args)` on the engine thread, after the calls before it. As with
        `anyio.to_thread.run_sync`, a cancelled caller waits for the call to end, unless
        `abandon_on_cancel`: then it returns at once and the call runs on unobserved."""
        future: Future[T] = Future()
        context = contextvars.copy_context()  # as to_thread: the caller's trace span, log context
        self._ensure_started().put((future, context.run, (function, *args)))
        waiting = asyncio.wrap_future(future)
        if abandon_on_cancel:
            return await waiting
        with anyio.CancelScope(shield=True):
            result = await waiting
        return result

    def close(self) -> None:
        """End the thread once the calls before this one are done (it starts again if used again)."""
        with self._start_lock:
            if self._thread is not None:
                self._calls.put(None)  # a new thread, if one starts, gets a queue of its own
                self._calls, self._thread = queue.SimpleQueue(), None

    def _ensure_started(self) -> queue.SimpleQueue[_Call]:
        """The running thread's queue of calls, starting the thread first if none runs."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, args=(self._calls,), name=self.name, daemon=True
                )
                self._thread.start()
            return self._calls

    @staticmethod
    def _serve(calls: queue.SimpleQueue[_Call]) -> None:
        while (call := calls.get()) is not None:
            future, function, args = call
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up before it started
            try:
                future.set_result(function(*args))
            except BaseException as exc:  # handed to the caller, as to_thread does
                future.set_exception(exc)

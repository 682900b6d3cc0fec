"""The engine thread: one long-lived thread runs every engine call, in order; a cancelled caller waits
for its call unless it may abandon it. And the heap trimmer, which returns freed pages between jobs."""

from __future__ import annotations

import contextvars
import sys
import threading
import time

import anyio
import pytest

from noisett_mcp.gpu.engine_thread import EngineThread
from noisett_mcp.gpu.heap import HeapTrimmer

pytestmark = pytest.mark.anyio


async def test_every_call_runs_on_the_same_daemon_thread_in_the_order_given() -> None:
    engine_thread = EngineThread()
    order: list[int] = []

    def work(n: int) -> int:
        order.append(n)
        return threading.get_ident()

    async with anyio.create_task_group() as tg:
        idents: list[int] = []

        async def call(n: int) -> None:
            idents.append(await engine_thread.run(work, n))

        for n in range(20):
            tg.start_soon(call, n)
            await anyio.sleep(0)  # submitted in this order
    assert order == list(range(20))
    assert len(set(idents)) == 1 and threading.get_ident() not in idents
    (thread,) = [t for t in threading.enumerate() if t.ident == idents[0]]
    assert thread.daemon and thread.name == "noisett-engine"


async def test_an_error_reaches_the_caller_and_the_thread_goes_on() -> None:
    engine_thread = EngineThread()

    def fail() -> None:
        raise ValueError("out of range")

    with pytest.raises(ValueError, match="out of range"):
        await engine_thread.run(fail)
    assert await engine_thread.run(sum, [1, 2]) == 3


async def test_a_cancelled_caller_waits_for_its_call_unless_it_may_abandon_it() -> None:
    engine_thread = EngineThread()
    release = threading.Event()
    finished: list[str] = []

    def slow(name: str) -> None:
        release.wait(10)
        finished.append(name)

    with anyio.move_on_after(0.1) as scope:  # cancelled while its call runs: it waits for the end
        threading.Timer(0.3, release.set).start()
        await engine_thread.run(slow, "waited for")
        assert finished == ["waited for"], "returned only once the call had ended"
        await anyio.sleep(0)  # the cancel lands at the caller's next checkpoint, as with to_thread
        pytest.fail("not cancelled")
    assert scope.cancel_called and scope.cancelled_caught

    release.clear()
    with anyio.move_on_after(0.1) as scope:
        await engine_thread.run(slow, "abandoned", abandon_on_cancel=True)
    assert scope.cancelled_caught and finished == ["waited for"], "returned before the call ended"
    release.set()
    assert await engine_thread.run(len, "next") == 4, "the next call runs after the abandoned one"
    assert finished == ["waited for", "abandoned"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_the_heap_trimmer_trims_at_most_once_per_interval() -> None:
    trimmer = HeapTrimmer(min_interval=60)
    assert trimmer.available
    assert trimmer.trim() is True
    assert trimmer.trim() is False, "within the interval: skipped"
    trimmer._last = time.monotonic() - 61
    assert trimmer.trim() is True


async def test_a_call_sees_its_callers_context_variables() -> None:
    request = contextvars.ContextVar[str]("request")
    request.set("call 7")
    assert await EngineThread().run(request.get) == "call 7"


async def test_close_ends_the_thread_after_its_calls_and_a_later_call_starts_a_new_one() -> None:
    engine_thread = EngineThread()
    first = await engine_thread.run(threading.get_ident)
    (thread,) = [t for t in threading.enumerate() if t.ident == first]
    engine_thread.close()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the thread ended"
    assert await engine_thread.run(len, "again") == 5, "a call after close starts a new thread"
    engine_thread.close()

"""WorkQueue: coalescing, one worker per key, scheduled adds, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from appliance_operator.workqueue import QueueShutDownError, WorkQueue


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def test_a_burst_of_adds_is_one_item() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        for _ in range(100):
            q.add("a")
        q.add("b")
        assert len(q) == 2
        assert await q.get() == "a"
        assert await q.get() == "b"
        assert len(q) == 0

    run(scenario())


def test_key_added_while_processing_comes_back_after_done() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        q.add("a")
        key = await q.get()
        q.add("a")  # an event arrives during the reconcile
        q.add("a")
        assert len(q) == 0  # not handed to a second worker meanwhile
        getter = asyncio.create_task(q.get())
        await asyncio.sleep(0)
        assert not getter.done()
        q.done(key)
        assert await getter == "a"  # exactly once more
        q.done("a")
        assert len(q) == 0

    run(scenario())


def test_add_after_keeps_the_earliest_schedule() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        loop = asyncio.get_running_loop()
        q.add_after("a", 30)
        q.add_after("a", 0.05)  # earlier: replaces
        q.add_after("a", 60)  # later: ignored
        assert q.scheduled == 1
        started = loop.time()
        assert await q.get() == "a"
        assert 0.04 <= loop.time() - started < 5
        assert q.scheduled == 0

    run(scenario())


def test_forget_drops_a_scheduled_add() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        q.add_after("a", 0.01)
        q.forget("a")
        q.add_after("b", 0.05)
        assert await q.get() == "b"

    run(scenario())


def test_shutdown_wakes_waiting_workers() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        waiters = [asyncio.create_task(q.get()) for _ in range(3)]
        await asyncio.sleep(0)
        q.shutdown()
        for waiter in waiters:
            with pytest.raises(QueueShutDownError):
                await waiter
        q.add("late")
        assert len(q) == 0

    run(scenario())

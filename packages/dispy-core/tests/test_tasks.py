"""The owner of a service's background tasks (dispy_core.aio.tasks.TaskOwner)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dispy_core.aio.tasks import TaskOwner

LOGGER = "test.tasks"


async def fail(message: str) -> None:
    await asyncio.sleep(0)
    raise RuntimeError(message)


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]


def test_failing_task_is_logged_once_and_siblings_go_on(caplog: pytest.LogCaptureFixture):
    async def main() -> None:
        owner = TaskOwner("svc", log=logging.getLogger(LOGGER))
        ticks = 0

        async def sibling() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = owner.start(sibling(), name="sibling")
        owner.start(fail("boom"), name="failing")
        for _ in range(10):
            await asyncio.sleep(0)
        before = ticks
        await asyncio.sleep(0)
        assert not task.done()
        assert ticks > before
        assert len(owner) == 1
        await owner.close()

    with caplog.at_level(logging.ERROR, LOGGER):
        asyncio.run(main())
    [record] = failures(caplog)
    assert "svc: failing failed: boom" in record.getMessage()
    assert record.exc_info is not None  # with its traceback


def test_on_error_gets_the_exception_instead_of_the_log(caplog: pytest.LogCaptureFixture):
    seen: list[BaseException] = []

    async def main() -> None:
        async with TaskOwner("svc", log=logging.getLogger(LOGGER), on_error=seen.append) as tasks:
            tasks.start(fail("one"))
            other: list[BaseException] = []
            tasks.start(fail("two"), on_error=other.append)  # the task's own handler wins
            for _ in range(5):
                await asyncio.sleep(0)
            assert [str(e) for e in other] == ["two"]

    with caplog.at_level(logging.ERROR, LOGGER):
        asyncio.run(main())
    assert [str(e) for e in seen] == ["one"]
    assert failures(caplog) == []


def test_failing_on_error_is_logged_with_the_original_error(caplog: pytest.LogCaptureFixture):
    def handler(exc: BaseException) -> None:
        raise ValueError("handler bug")

    async def main() -> None:
        async with TaskOwner("svc", log=logging.getLogger(LOGGER)) as tasks:
            tasks.start(fail("boom"), name="failing", on_error=handler)
            for _ in range(5):
                await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR, LOGGER):
        asyncio.run(main())
    messages = [r.getMessage() for r in failures(caplog)]
    assert messages == ["svc: while handling the failure of failing", "svc: failing failed: boom"]


def test_close_cancels_and_awaits_every_task():
    cleaned: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits: close waits for it
            cleaned.append(name)

    async def main() -> list[asyncio.Task[None]]:
        async with TaskOwner("svc") as tasks:
            started = [tasks.start(forever(str(i))) for i in range(3)]
            await asyncio.sleep(0)
        assert all(t.cancelled() for t in started)
        assert len(tasks) == 0
        return started

    asyncio.run(main())
    assert sorted(cleaned) == ["0", "1", "2"]


def test_no_task_left_pending_after_close():
    async def main() -> None:
        tasks = TaskOwner("svc")

        async def spawner() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                # A task started while the owner is closing is stopped too.
                tasks.start(asyncio.Event().wait())

        tasks.start(spawner())
        tasks.start(asyncio.sleep(3600))
        await asyncio.sleep(0)
        await tasks.close()
        assert len(tasks) == 0
        assert tasks.closed
        late = tasks.start(asyncio.sleep(3600))  # after close: cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await late
        assert len(tasks) == 0
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert pending == []

    asyncio.run(main())  # and no "Task was destroyed but it is pending" at the loop's end


def test_exception_during_close_is_logged(caplog: pytest.LogCaptureFixture):
    async def bad_cleanup() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise OSError("cleanup failed")

    async def main() -> None:
        tasks = TaskOwner("svc", log=logging.getLogger(LOGGER))
        tasks.start(bad_cleanup(), name="bad")
        await asyncio.sleep(0)
        await tasks.close()  # does not raise

    with caplog.at_level(logging.ERROR, LOGGER):
        asyncio.run(main())
    [record] = failures(caplog)
    assert record.getMessage() == "svc: bad failed: cleanup failed"


def test_close_from_one_of_its_tasks_spares_the_caller():
    async def main() -> None:
        tasks = TaskOwner("svc")
        other = tasks.start(asyncio.sleep(3600))

        async def closer() -> str:
            await tasks.close()
            return "closed"

        me = tasks.start(closer())
        assert await me == "closed"
        assert other.cancelled()

    asyncio.run(main())


def test_close_with_grace_lets_tasks_finish_first():
    async def main() -> None:
        tasks = TaskOwner("svc")
        quick = tasks.start(asyncio.sleep(0.01, "done"))
        slow = tasks.start(asyncio.sleep(3600))
        await tasks.close(grace=0.2)
        assert quick.result() == "done"
        assert slow.cancelled()

    asyncio.run(main())


def test_cancel_keeps_the_owner_open():
    async def main() -> None:
        tasks = TaskOwner("svc")
        first = tasks.start(asyncio.sleep(3600))
        tasks.cancel()
        await asyncio.sleep(0)
        assert first.cancelled()
        second = tasks.start(asyncio.sleep(0, "ran"))
        assert await second == "ran"
        await tasks.close()

    asyncio.run(main())

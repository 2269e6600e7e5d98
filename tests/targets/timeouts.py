"""wait_for() and asyncio.timeout(): ``via-wait-for`` awaits wait_for(task),
``via-timeout`` awaits a task inside ``async with asyncio.timeout()``, and
``via-wait-for-coro`` awaits wait_for(coroutine) (on 3.11 wait_for wraps the
coroutine in a new unnamed task; from 3.12 on it awaits the coroutine itself).

Expected awaiters (3.14): wf-child <- via-wait-for; to-child <- via-timeout.
"""

import asyncio


def announce() -> None:
    """Print READY after a few more loop iterations, once every task is parked."""
    loop = asyncio.get_running_loop()

    def tick(n: int) -> None:
        if n:
            loop.call_soon(tick, n - 1)
        else:
            print("READY", flush=True)

    loop.call_soon(tick, 20)


async def child() -> None:
    await asyncio.sleep(3600)  # CHILD


async def via_wait_for(task: asyncio.Task) -> None:
    await asyncio.wait_for(task, 3600)  # WAIT-FOR


async def via_timeout(task: asyncio.Task) -> None:
    async with asyncio.timeout(3600):
        await task  # TIMEOUT


async def via_wait_for_coro() -> None:
    await asyncio.wait_for(child(), 3600)  # WAIT-FOR-CORO


async def main() -> None:
    asyncio.current_task().set_name("main")
    keep = [  # noqa: F841 (references keep the tasks alive)
        asyncio.create_task(via_wait_for(asyncio.create_task(child(), name="wf-child")),
                            name="via-wait-for"),
        asyncio.create_task(via_timeout(asyncio.create_task(child(), name="to-child")),
                            name="via-timeout"),
        asyncio.create_task(via_wait_for_coro(), name="via-wait-for-coro"),
    ]
    announce()
    await asyncio.sleep(3600)  # MAIN


asyncio.run(main())

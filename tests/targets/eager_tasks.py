"""Eager tasks (3.12+): with ``asyncio.eager_task_factory`` installed, ``eager-parent``
starts at once, creates ``eager-child`` (which also starts at once and sleeps) and
awaits it; ``eager-done`` finishes during its eager start and is never scheduled.

Expected awaiters (3.14): eager-child <- eager-parent <- main.
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


async def done_at_once() -> int:
    return 1


async def eager_child() -> None:
    await asyncio.sleep(3600)  # CHILD


async def eager_parent() -> None:
    child = asyncio.create_task(eager_child(), name="eager-child")
    await child  # PARENT


async def main() -> None:
    asyncio.current_task().set_name("main")
    asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
    done = asyncio.create_task(done_at_once(), name="eager-done")
    assert done.done()
    parent = asyncio.create_task(eager_parent(), name="eager-parent")
    announce()
    await parent  # MAIN


asyncio.run(main())

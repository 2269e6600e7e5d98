"""Nested TaskGroups: ``main``'s group holds ``outer-1`` (which opens its own group
with inner-1 and inner-2) and ``outer-2``; every group waits in ``__aexit__``.

Expected awaiters (3.14): outer-1, outer-2 <- main; inner-1, inner-2 <- outer-1.
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


async def leaf() -> None:
    await asyncio.sleep(3600)  # LEAF


async def inner_group() -> None:
    async with asyncio.TaskGroup() as tg:  # INNER-GROUP
        tg.create_task(leaf(), name="inner-1")
        tg.create_task(leaf(), name="inner-2")


async def main() -> None:
    asyncio.current_task().set_name("main")
    async with asyncio.TaskGroup() as tg:  # OUTER-GROUP
        tg.create_task(inner_group(), name="outer-1")
        tg.create_task(leaf(), name="outer-2")
        announce()


asyncio.run(main())

"""Nested gather: ``main`` gathers a gather of two tasks, a third task and a task
``middle`` that itself gathers two tasks.  Every leaf sleeps.

Expected awaiters (3.14): a, b, c, middle <- main; m-leaf-1, m-leaf-2 <- middle.
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


async def middle() -> None:
    one = asyncio.create_task(leaf(), name="m-leaf-1")
    two = asyncio.create_task(leaf(), name="m-leaf-2")
    await asyncio.gather(one, two)  # MIDDLE


async def main() -> None:
    asyncio.current_task().set_name("main")
    a = asyncio.create_task(leaf(), name="a")
    b = asyncio.create_task(leaf(), name="b")
    c = asyncio.create_task(leaf(), name="c")
    m = asyncio.create_task(middle(), name="middle")
    announce()
    await asyncio.gather(asyncio.gather(a, b), c, m)  # MAIN


asyncio.run(main())

"""An await cycle: task ``cycle-a`` awaits task ``cycle-b``, which awaits ``cycle-a``
(a deadlock asyncio does not detect); ``main`` sleeps.

Expected awaiters (3.14): cycle-a <- cycle-b, cycle-b <- cycle-a.
"""

import asyncio

tasks: dict[str, asyncio.Task] = {}


def announce() -> None:
    """Print READY after a few more loop iterations, once every task is parked."""
    loop = asyncio.get_running_loop()

    def tick(n: int) -> None:
        if n:
            loop.call_soon(tick, n - 1)
        else:
            print("READY", flush=True)

    loop.call_soon(tick, 20)


async def a() -> None:
    await asyncio.sleep(0)
    await tasks["cycle-b"]  # A


async def b() -> None:
    await asyncio.sleep(0)
    await tasks["cycle-a"]  # B


async def main() -> None:
    asyncio.current_task().set_name("main")
    tasks["cycle-a"] = asyncio.create_task(a(), name="cycle-a")
    tasks["cycle-b"] = asyncio.create_task(b(), name="cycle-b")
    announce()
    await asyncio.sleep(3600)  # MAIN


asyncio.run(main())

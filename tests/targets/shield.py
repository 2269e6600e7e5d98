"""shield(): task ``guard`` awaits ``asyncio.shield(protected)``; ``main`` awaits guard.

Expected awaiters (3.14): protected <- guard <- main.
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


async def protected() -> None:
    await asyncio.sleep(3600)  # PROTECTED


async def guard(task: asyncio.Task) -> None:
    await asyncio.shield(task)  # SHIELD


async def main() -> None:
    asyncio.current_task().set_name("main")
    p = asyncio.create_task(protected(), name="protected")
    g = asyncio.create_task(guard(p), name="guard")
    announce()
    await g  # MAIN


asyncio.run(main())

"""A gather that no task awaits (yet): ``main`` calls ``asyncio.gather(d-1, d-2)``,
keeps the future and sleeps.

Expected awaiters (3.14, which records the task that called gather):
d-1, d-2 <- main, hung under main's innermost frame (its sleep).
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


async def sleeper() -> None:
    await asyncio.sleep(3600)  # SLEEPER


async def main() -> None:
    asyncio.current_task().set_name("main")
    pending = asyncio.gather(asyncio.create_task(sleeper(), name="d-1"),
                             asyncio.create_task(sleeper(), name="d-2"))
    announce()
    await asyncio.sleep(3600)  # MAIN
    await pending


asyncio.run(main())

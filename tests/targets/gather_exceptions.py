"""gather(..., return_exceptions=True) whose first child has already failed: the
gather keeps waiting for the two slow children.

Expected awaiters (3.14): slow-1, slow-2 <- main; ``fails`` is done (not listed).
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


async def fails() -> None:
    await asyncio.sleep(0)
    raise ValueError("boom")


async def slow() -> None:
    await asyncio.sleep(3600)  # SLOW


async def main() -> None:
    asyncio.current_task().set_name("main")
    children = [asyncio.create_task(fails(), name="fails"),
                asyncio.create_task(slow(), name="slow-1"),
                asyncio.create_task(slow(), name="slow-2")]
    announce()
    await asyncio.gather(*children, return_exceptions=True)  # MAIN


asyncio.run(main())

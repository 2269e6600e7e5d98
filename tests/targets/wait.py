"""asyncio.wait(): ``first`` waits for FIRST_COMPLETED of w-1, w-2; ``main`` waits
for ALL_COMPLETED of w-3 and ``first``, with a timeout.

Expected awaiters (3.14): w-1, w-2 <- first; w-3, first <- main.
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


async def first() -> None:
    w1 = asyncio.create_task(sleeper(), name="w-1")
    w2 = asyncio.create_task(sleeper(), name="w-2")
    await asyncio.wait({w1, w2}, return_when=asyncio.FIRST_COMPLETED)  # FIRST


async def main() -> None:
    asyncio.current_task().set_name("main")
    w3 = asyncio.create_task(sleeper(), name="w-3")
    f = asyncio.create_task(first(), name="first")
    announce()
    await asyncio.wait([w3, f], timeout=3600)  # MAIN


asyncio.run(main())

"""Futures that are done await nothing: a gather that failed (one child raised, the
others go on), and a shield whose outer future was cancelled by a timeout (the
shielded task goes on).

Expected awaiters (3.14): none; slow-1, slow-2 and protected are roots, as is main.
"""

import asyncio
import contextlib


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
    with contextlib.suppress(ValueError):
        await asyncio.gather(*children)
    protected = asyncio.create_task(slow(), name="protected")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(protected), 0.01)
    announce()
    await asyncio.sleep(3600)  # MAIN


asyncio.run(main())

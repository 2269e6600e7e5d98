"""as_completed(): task ``consumer`` iterates ``asyncio.as_completed`` over two
pending tasks and awaits the first result.

Expected awaiters (3.14): ac-1, ac-2 <- consumer <- main.
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


async def consumer(tasks: list[asyncio.Task]) -> None:
    for next_done in asyncio.as_completed(tasks):
        await next_done  # CONSUMER


async def main() -> None:
    asyncio.current_task().set_name("main")
    tasks = [asyncio.create_task(sleeper(), name="ac-1"),
             asyncio.create_task(sleeper(), name="ac-2")]
    c = asyncio.create_task(consumer(tasks), name="consumer")
    announce()
    await c  # MAIN


asyncio.run(main())

"""A task awaiting a task awaiting a task: main -> first -> second -> third
(``third`` sleeps), each with a plain ``await task``.

Expected awaiters (3.14): first <- main, second <- first, third <- second.
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


async def third() -> None:
    await asyncio.sleep(3600)  # THIRD


async def second() -> None:
    await asyncio.create_task(third(), name="third")  # SECOND


async def first() -> None:
    t = asyncio.create_task(second(), name="second")
    await t  # FIRST


async def main() -> None:
    asyncio.current_task().set_name("main")
    t = asyncio.create_task(first(), name="first")
    announce()
    await t  # MAIN


asyncio.run(main())

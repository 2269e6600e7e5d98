"""Task names: ``main`` keeps its default name (Task-1); two tasks are created
without a name (Task-2, Task-3: kept lazily as a number from 3.12 on); one named
task and one unnamed task (Task-4) are renamed with ``set_name``.  None of them
has its name read by the program (reading it would make the lazy name a str).

Expected names: Task-1, Task-2, Task-3, renamed, renamed-lazy.
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


async def anonymous() -> None:
    await asyncio.sleep(3600)  # ANONYMOUS


async def renamed() -> None:
    await asyncio.sleep(3600)  # RENAMED


async def main() -> None:
    first = asyncio.create_task(anonymous())
    second = asyncio.create_task(anonymous())
    named = asyncio.create_task(renamed(), name="before-rename")
    named.set_name("renamed")
    lazy = asyncio.create_task(renamed())
    lazy.set_name("renamed-lazy")
    announce()
    await asyncio.gather(first, second, named, lazy)  # MAIN


asyncio.run(main())

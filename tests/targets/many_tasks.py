"""N pending tasks in groups of 100 under TaskGroups, each parked three coroutines deep.

Usage: many_tasks.py N. Prints READY once every task waits.
"""

import asyncio
import sys

GROUP = 100


async def leaf(i: int) -> None:
    await middle(i)


async def middle(i: int) -> None:
    await inner(i)


async def inner(i: int) -> None:
    await asyncio.sleep(3600 + i % 7)


async def group(start: int, count: int) -> None:
    async with asyncio.TaskGroup() as tg:
        for i in range(start, start + count):
            tg.create_task(leaf(i), name=f"leaf-{i}")


async def main(n: int) -> None:
    groups = []
    for start in range(0, n, GROUP):
        groups.append(asyncio.create_task(group(start, min(GROUP, n - start)),
                                          name=f"group-{start // GROUP}"))
        if len(groups) % 100 == 0:
            await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    print("READY", len(asyncio.all_tasks()), flush=True)
    await asyncio.sleep(36000)


asyncio.run(main(int(sys.argv[1])))

"""A service for the container tests: the tree of gh-135371 (tasks that wait for
good, so that two reads of it are the same) and a ticker that steps every TICK
seconds (so that the probes see steps).  Prints READY once the tasks wait.

Usage: fleet_app.py [TICK] (default 0.05).
"""

import asyncio
import sys

TICK = float(sys.argv[1]) if len(sys.argv) > 1 else 0.05


async def leaf() -> None:
    await asyncio.sleep(3600)


async def branch() -> None:
    await asyncio.gather(asyncio.create_task(leaf(), name="leaf.0"),
                         asyncio.create_task(leaf(), name="leaf.1"))


async def ticker() -> None:
    while True:
        await asyncio.sleep(TICK)


async def main() -> None:
    async with asyncio.TaskGroup() as group:
        group.create_task(branch(), name="branch.0")
        group.create_task(branch(), name="branch.1")
        group.create_task(ticker(), name="ticker")
        for _ in range(3):
            await asyncio.sleep(0)
        print("READY", flush=True)


asyncio.run(main())

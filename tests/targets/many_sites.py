"""Cardinality: TASKS tasks with distinct names, suspended at SITES distinct await
sites (one generated coroutine function each).

Usage: many_sites.py [TASKS [SITES]] (defaults 100000, 10000); prints READY.
"""

import asyncio
import sys

TASKS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
SITES = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000

source = "\n".join(f"async def site_{i}(fut):\n    await fut\n" for i in range(SITES))
namespace: dict = {}
exec(compile(source, "generated_sites.py", "exec"), namespace)
functions = [namespace[f"site_{i}"] for i in range(SITES)]


async def main() -> None:
    never = asyncio.get_running_loop().create_future()
    tasks = [asyncio.create_task(functions[i % SITES](never), name=f"task-{i:06d}-{i * 7919}")
             for i in range(TASKS)]
    await asyncio.sleep(0.5)
    print("READY", len(tasks), flush=True)
    await never


asyncio.run(main())

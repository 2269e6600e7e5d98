"""N tasks suspended at a known coroutine depth, under one main task.

Each worker is a chain of DEPTH coroutines whose innermost awaits a bare future, so
every worker's stack has exactly DEPTH frames; main awaits them all (gather), so each
worker is one task away from the root.
Usage: depth.py N DEPTH; prints READY once every worker is suspended.
"""

import asyncio
import sys

N, DEPTH = int(sys.argv[1]), int(sys.argv[2])


async def level(n: int, fut: asyncio.Future) -> None:
    if n == 1:
        await fut
    else:
        await level(n - 1, fut)


async def main() -> None:
    loop = asyncio.get_running_loop()
    never = loop.create_future()
    workers = [asyncio.create_task(level(DEPTH, never), name=f"worker-{i}") for i in range(N)]
    await asyncio.sleep(0.1)
    print("READY", flush=True)
    await asyncio.gather(*workers)


asyncio.run(main())

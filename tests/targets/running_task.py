"""A task that blocks its event loop in synchronous code, next to a waiting task.

``blocker`` calls ``crunch()``, which sleeps with time.sleep: the task is
running (not suspended) and its frames are on the main thread's stack.
Prints READY from inside the blocking call.
"""

import asyncio
import time


def crunch() -> None:
    print("READY", flush=True)
    time.sleep(3600)  # BLOCKING


async def blocker() -> None:
    await asyncio.sleep(0)
    crunch()  # CALLS-CRUNCH


async def waiter() -> None:
    await asyncio.sleep(3600)  # WAITER-AWAIT


async def main() -> None:
    w = asyncio.create_task(waiter(), name="waiter")
    b = asyncio.create_task(blocker(), name="blocker")
    await asyncio.gather(w, b)


asyncio.run(main())

"""A task whose step starts an eager task that blocks (3.12+): ``outer`` (a task
like any other) creates ``inner`` with ``asyncio.eager_task_factory`` installed;
``inner``'s first step runs at once, inside ``outer``'s step, and blocks in
synchronous code.  Both tasks are running: the thread names ``inner`` as its running
task, ``outer`` is below it on the same stack.  Prints READY from inside the
blocking call.
"""

import asyncio
import time


def block() -> None:
    print("READY", flush=True)
    time.sleep(3600)  # BLOCKING


async def inner() -> None:
    block()  # CALLS-BLOCK


started: list[asyncio.Task] = []


async def outer() -> None:
    await asyncio.sleep(0)   # scheduled, listed: a task like any other
    asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
    started.append(asyncio.create_task(inner(), name="inner"))  # STARTS-INNER


async def main() -> None:
    await asyncio.create_task(outer(), name="outer")


asyncio.run(main())

"""Task creation, the cost Task.__init__'s probes add: batches of short tasks.

``spawn.py eager``: with ``asyncio.eager_task_factory`` (3.12+), each task runs its
one step inside Task.__init__ and finishes there; ``spawn.py plain``: each task is
scheduled and runs its one step from the loop.  Runs until killed; each line read on
stdin is answered with "TASKS CPU_SECONDS" so far.
"""

import asyncio
import sys
import time

BATCH = 100


async def work() -> int:
    return 1


async def main() -> None:
    loop = asyncio.get_running_loop()
    if sys.argv[1] == "eager":
        loop.set_task_factory(asyncio.eager_task_factory)
    count = 0

    async def spawn() -> None:
        nonlocal count
        while True:
            await asyncio.gather(*[asyncio.create_task(work()) for _ in range(BATCH)])
            count += BATCH
            await asyncio.sleep(0)   # a gather of eager tasks is done at once: let I/O in

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    spawner = asyncio.create_task(spawn(), name="spawn")
    print("READY", flush=True)
    while await reader.readline():
        print(count, time.process_time(), flush=True)
    spawner.cancel()


asyncio.run(main())

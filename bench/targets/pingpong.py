"""The worst case for step tracing: two tasks bouncing an item through two queues.

Every round trip is two task steps and almost no other work.  Runs until killed;
each line read on stdin is answered with "ROUND_TRIPS CPU_SECONDS" so far.
"""

import asyncio
import sys
import time


async def main() -> None:
    q1: asyncio.Queue = asyncio.Queue()
    q2: asyncio.Queue = asyncio.Queue()
    count = 0

    async def pong() -> None:
        while True:
            await q2.put(await q1.get())

    async def ping() -> None:
        nonlocal count
        while True:
            await q1.put(count)
            await q2.get()
            count += 1

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks = [asyncio.create_task(pong(), name="pong"), asyncio.create_task(ping(), name="ping")]
    print("READY", flush=True)
    while await reader.readline():
        print(count, time.process_time(), flush=True)
    for task in tasks:
        task.cancel()


asyncio.run(main())

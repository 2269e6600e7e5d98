"""Thousands of tasks stepping, being created and finishing, without pause.

Workers bounce items through queues, sleep for random short times and spawn
short-lived children, so task objects and frames change under any reader.
Prints READY once the churn runs.
"""

import asyncio
import random
import sys


async def child(n: int) -> int:
    await asyncio.sleep(random.random() / 100)
    return n


async def worker(i: int, inbox: asyncio.Queue, outbox: asyncio.Queue) -> None:
    while True:
        item = await inbox.get()
        if item % 3 == 0:
            await asyncio.gather(*(child(item + k) for k in range(3)))
        elif item % 3 == 1:
            await asyncio.sleep(random.random() / 200)
        else:
            await asyncio.wait_for(child(item), timeout=1)
        await outbox.put(item + 1)


async def main(workers: int) -> None:
    queues = [asyncio.Queue() for _ in range(workers)]
    tasks = [asyncio.create_task(worker(i, queues[i], queues[(i + 1) % workers]),
                                 name=f"worker-{i}") for i in range(workers)]
    for i, q in enumerate(queues):
        for k in range(4):
            q.put_nowait(i * 4 + k)
    await asyncio.sleep(0.2)
    print("READY", flush=True)
    await asyncio.gather(*tasks)


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))

"""Tasks that keep stepping between two await sites, A and B, as fast as they can.

Each worker alternates: it waits on a queue (site A), then sleeps a tick (site B).
A reader that samples such a task from memory races with it all the time; BPF
capture records it at the end of each step, suspended at A or at B.
Usage: alternating.py [N [PAUSE]]; PAUSE seconds at site B (default 0: as fast as
possible); prints READY once the workers run.
"""

import asyncio
import sys

PAUSE = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0


async def worker(inbox: asyncio.Queue, outbox: asyncio.Queue) -> None:
    while True:
        item = await inbox.get()  # SITE-A
        await asyncio.sleep(PAUSE)  # SITE-B
        outbox.put_nowait(item)


async def main(n: int) -> None:
    queues = [asyncio.Queue() for _ in range(n)]
    workers = [asyncio.create_task(worker(queues[i], queues[(i + 1) % n]), name=f"w{i}")
               for i in range(n)]
    for q in queues[: max(1, n // 2)]:
        q.put_nowait(0)
    await asyncio.sleep(0.1)
    print("READY", flush=True)
    await asyncio.gather(*workers)


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50))

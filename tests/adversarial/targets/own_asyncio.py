"""An asyncio process that runs its own copy of the _asyncio module (a file of its
user's, found first on sys.path): each such process gives a tracer one more distinct
file to probe.  Usage: own_asyncio.py DIR (holding the copy, under the module's own
file name); prints READY once its tasks run."""

import sys

sys.path.insert(0, sys.argv[1])

import _asyncio
import asyncio

assert _asyncio.__file__.startswith(sys.argv[1]), _asyncio.__file__


async def ping(inbox: asyncio.Queue, outbox: asyncio.Queue) -> None:
    while True:
        outbox.put_nowait(await inbox.get())
        await asyncio.sleep(0.001)


async def main() -> None:
    a, b = asyncio.Queue(), asyncio.Queue()
    tasks = [asyncio.create_task(ping(a, b)), asyncio.create_task(ping(b, a))]
    a.put_nowait(0)
    await asyncio.sleep(0.05)
    print("READY", flush=True)
    await asyncio.gather(*tasks)


asyncio.run(main())

"""The example of CPython gh-135371, with a READY handshake once its tasks wait."""

import asyncio
import sys
from asyncio import taskgroups


async def foo1():
    await foo11()

async def foo11():
    await foo12()

async def foo12():
    x = asyncio.create_task(foo2(), name="foo2")
    x2 = asyncio.create_task(foo2(), name="foo2")
    await asyncio.gather(x2, x, return_exceptions=True)

async def foo2():
    await asyncio.sleep(500)

async def ready():
    for _ in range(3):
        await asyncio.sleep(0)
    print("READY", flush=True)

async def runner():
    async with taskgroups.TaskGroup() as g:
        g.create_task(foo1(), name="foo1.0")
        g.create_task(foo1(), name="foo1.1")
        g.create_task(foo1(), name="foo1.2")
        g.create_task(foo2(), name="foo2")
        await ready()
        await asyncio.sleep(1000)

asyncio.run(runner())
sys.exit(0)

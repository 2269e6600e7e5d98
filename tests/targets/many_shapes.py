"""Many copies of every kind of await chain aiobpf follows, so that a read meets each
kind of suspended frame again and again (and decodes most of them from what the first
copies taught it: ``speedups.known_level``).

Usage: many_shapes.py [COPIES] (default 40).  Per copy: a coroutine chain three deep;
a generator-based coroutine; an ``__await__`` generator; a coroutine wrapper; an async
generator, one inside another, ``anext`` with a default; a task awaiting a task; a
TaskGroup's child; a queue, a lock and an event.  Prints READY once every task waits.
"""

import asyncio
import sys
import types


async def deep(i: int) -> None:
    await deeper(i)


async def deeper(i: int) -> None:
    await deepest(i)


async def deepest(i: int) -> None:
    await asyncio.sleep(3600 + i % 3)


@types.coroutine
def legacy_sleep():
    yield from asyncio.sleep(3600)


async def legacy() -> None:
    await legacy_sleep()


class Ticket:
    def __init__(self) -> None:
        self.future = asyncio.get_running_loop().create_future()

    def __await__(self):
        return (yield from self.future)


async def ticket() -> None:
    await Ticket()


async def delegated() -> None:
    await asyncio.sleep(3600)


class Delegate:
    def __await__(self):
        return delegated().__await__()


async def delegate() -> None:
    await Delegate()


async def ticks():
    while True:
        await asyncio.sleep(3600)
        yield 1


async def relay():
    async for item in ticks():
        yield item


async def consumer() -> None:
    async for _ in ticks():
        pass


async def nested() -> None:
    async for _ in relay():
        pass


async def anext_default() -> None:
    await anext(ticks(), None)


async def awaits_task(other: asyncio.Task) -> None:
    await other


async def group(i: int) -> None:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(deep(i), name=f"grouped-{i}")


async def blocked(queue: asyncio.Queue, lock: asyncio.Lock, event: asyncio.Event) -> None:
    await asyncio.gather(queue.get(), lock.acquire(), event.wait())


async def main(copies: int) -> None:
    asyncio.current_task().set_name("main")
    tasks = []
    lock = asyncio.Lock()
    await lock.acquire()
    for i in range(copies):
        made = [asyncio.create_task(deep(i), name=f"deep-{i}"),
                asyncio.create_task(legacy(), name=f"legacy-{i}"),
                asyncio.create_task(ticket(), name=f"ticket-{i}"),
                asyncio.create_task(delegate(), name=f"delegate-{i}"),
                asyncio.create_task(consumer(), name=f"consumer-{i}"),
                asyncio.create_task(nested(), name=f"nested-{i}"),
                asyncio.create_task(anext_default(), name=f"anext-{i}"),
                asyncio.create_task(group(i), name=f"group-{i}"),
                asyncio.create_task(blocked(asyncio.Queue(), lock, asyncio.Event()),
                                    name=f"blocked-{i}")]
        made.append(asyncio.create_task(awaits_task(made[0]), name=f"awaits-{i}"))
        tasks += made
    for _ in range(20):   # every task parks
        await asyncio.sleep(0)
    print("READY", len(asyncio.all_tasks()), flush=True)
    await asyncio.gather(*tasks)


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 40))

"""Tasks blocked on asyncio primitives: an empty Queue, a Lock that ``main`` holds,
an unset Event, a Semaphore at zero and a Condition; ``main`` gathers them.

Expected awaiters (3.14): q-get, lock, event, semaphore, condition <- main.
"""

import asyncio


def announce() -> None:
    """Print READY after a few more loop iterations, once every task is parked."""
    loop = asyncio.get_running_loop()

    def tick(n: int) -> None:
        if n:
            loop.call_soon(tick, n - 1)
        else:
            print("READY", flush=True)

    loop.call_soon(tick, 20)


async def get_item(queue: asyncio.Queue) -> None:
    await queue.get()  # QUEUE


async def take_lock(lock: asyncio.Lock) -> None:
    async with lock:  # LOCK
        pass


async def wait_event(event: asyncio.Event) -> None:
    await event.wait()  # EVENT


async def take_semaphore(sem: asyncio.Semaphore) -> None:
    await sem.acquire()  # SEMAPHORE


async def wait_condition(cond: asyncio.Condition) -> None:
    async with cond:
        await cond.wait()  # CONDITION


async def main() -> None:
    asyncio.current_task().set_name("main")
    lock = asyncio.Lock()
    await lock.acquire()
    tasks = [
        asyncio.create_task(get_item(asyncio.Queue()), name="q-get"),
        asyncio.create_task(take_lock(lock), name="lock"),
        asyncio.create_task(wait_event(asyncio.Event()), name="event"),
        asyncio.create_task(take_semaphore(asyncio.Semaphore(0)), name="semaphore"),
        asyncio.create_task(wait_condition(asyncio.Condition()), name="condition"),
    ]
    announce()
    await asyncio.gather(*tasks)  # MAIN


asyncio.run(main())

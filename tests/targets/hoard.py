"""A process that makes a tracer hold much: a ticker task that steps every 10 ms;
on SIGUSR2, N pending tasks (groups of 100 under TaskGroups, each parked three
coroutines deep); on SIGUSR1, THREADS short-lived threads (at most 32 at a time), each
running its own event loop for a few steps and exiting.

Usage: hoard.py N THREADS.  Prints ``READY`` at start, ``HOARDED <tasks>`` once the
N tasks wait, and ``CHURNED <threads>`` once the threads have all exited.
"""

import asyncio
import signal
import sys
import threading

GROUP = 100
AT_ONCE = 32


async def leaf(i: int) -> None:
    await middle(i)


async def middle(i: int) -> None:
    await inner(i)


async def inner(i: int) -> None:
    await asyncio.sleep(3600 + i % 7)


async def group(start: int, count: int) -> None:
    async with asyncio.TaskGroup() as tg:
        for i in range(start, start + count):
            tg.create_task(leaf(i), name=f"leaf-{i}")


async def ticker() -> None:
    while True:
        await asyncio.sleep(0.01)


async def brief() -> None:
    async def step() -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    await asyncio.create_task(step())


def churn(threads: int) -> None:
    slots = threading.Semaphore(AT_ONCE)

    def one() -> None:
        # Not asyncio.run: its cleanup looks at every task of the process (all_tasks).
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(brief())
        finally:
            loop.close()
            slots.release()

    started = []
    for _ in range(threads):
        slots.acquire()
        thread = threading.Thread(target=one)
        thread.start()
        started.append(thread)
        if len(started) >= 4 * AT_ONCE:
            for done in started:
                done.join()
            started.clear()
    for thread in started:
        thread.join()
    print("CHURNED", threads, flush=True)


async def hoard(n: int) -> None:
    groups = []
    for start in range(0, n, GROUP):
        groups.append(asyncio.create_task(group(start, min(GROUP, n - start)),
                                          name=f"group-{start // GROUP}"))
        if len(groups) % 100 == 0:
            await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    print("HOARDED", len(asyncio.all_tasks()) - 1, flush=True)   # all but this one


async def main(n: int, threads: int) -> None:
    tick = asyncio.create_task(ticker(), name="ticker")
    loop = asyncio.get_running_loop()
    kept = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: threading.Thread(
        target=churn, args=(threads,), daemon=True).start())
    loop.add_signal_handler(signal.SIGUSR2, lambda: kept.append(
        asyncio.create_task(hoard(n), name="hoard")))
    print("READY", flush=True)
    await tick


asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))

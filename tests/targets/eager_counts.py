"""Tasks created eagerly and not (3.12+), on request: a count to check aiobpf's against.

Usage: eager_counts.py N BUSY_MS.  Prints READY, then for each line on stdin starts one
round in a new task, ``driver`` (a task like any other), whose single step creates,
with ``asyncio.eager_task_factory`` installed:

- N tasks ``eager-done-I`` that spin BUSY_MS and finish during their eager first step;
- N tasks ``eager-wait-I`` that spin BUSY_MS, suspend (``sleep(0)``), then finish;

then, with no task factory, N tasks ``plain-I`` that suspend once and finish.  The
driver then awaits them all and prints ``DONE <tasks created> <tasks finished>`` (the
driver included).  The eager first steps (2 * N * BUSY_MS of spinning) run inside the
driver's first step; a tracer that attributes them to it sees that step take that long.
"""

import asyncio
import sys
import time

N = int(sys.argv[1])
BUSY_S = float(sys.argv[2]) / 1000


def spin() -> None:
    end = time.perf_counter() + BUSY_S
    while time.perf_counter() < end:
        pass


async def done_at_once() -> None:
    spin()  # EAGER-DONE


async def wait_once() -> None:
    spin()
    await asyncio.sleep(0)  # EAGER-WAIT


async def plain() -> None:
    await asyncio.sleep(0)  # PLAIN


kept: list[asyncio.Task] = []


async def driver() -> None:
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)
    tasks = [asyncio.create_task(done_at_once(), name=f"eager-done-{i}") for i in range(N)]
    tasks += [asyncio.create_task(wait_once(), name=f"eager-wait-{i}") for i in range(N)]
    loop.set_task_factory(None)
    tasks += [asyncio.create_task(plain(), name=f"plain-{i}") for i in range(N)]
    assert all(t.done() for t in tasks[:N]) and not any(t.done() for t in tasks[N:])
    kept[:] = tasks   # until the next round: a tracer may read their names late
    await asyncio.gather(*tasks)  # DRIVER


async def main() -> None:
    asyncio.current_task().set_name("main")
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(sys.stdin.fileno(), lambda: requests.put_nowait(sys.stdin.readline()))
    print("READY", flush=True)
    while await requests.get():
        await asyncio.create_task(driver(), name="driver")
        print(f"DONE {3 * N + 1} {3 * N + 1}", flush=True)


asyncio.run(main())

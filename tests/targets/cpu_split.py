"""A known CPU split between two tasks: "A", awaited by "parent" through two coroutines,
spins in a nested synchronous function ~75% of the loop's time; "B" ~25%.

Each turn, A computes for 3 slices and B for 1 (SLICE seconds of CPU each), then both
yield: the shares hold whatever the machine's speed."""

import asyncio
import sys
import time

SLICE = float(sys.argv[1]) if len(sys.argv) > 1 else 0.002


def spin(seconds: float) -> None:
    """Burn this thread's CPU time for ``seconds``."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def inner_work(slices: int) -> None:
    spin(slices * SLICE)


def outer_work(slices: int) -> None:
    inner_work(slices)


async def a_loop() -> None:
    while True:
        outer_work(3)
        await asyncio.sleep(0)


async def b_loop() -> None:
    while True:
        spin(SLICE)
        await asyncio.sleep(0)


async def a_middle() -> None:
    await a_loop()


async def parent() -> None:
    await asyncio.create_task(a_middle_outer(), name="A")


async def a_middle_outer() -> None:
    await a_middle()


async def main() -> None:
    tasks = [asyncio.create_task(parent(), name="parent"),
             asyncio.create_task(b_loop(), name="B")]
    await asyncio.sleep(0.1)
    print("READY", flush=True)
    await asyncio.gather(*tasks)


asyncio.run(main())

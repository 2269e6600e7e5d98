"""A loop with a blocking step: every PERIOD seconds a "blocker" task's step sleeps
BLOCK seconds (time.sleep: the event loop is blocked), and four "victim" tasks woken
in the same loop iteration start their steps that much late.

Usage: loop_lag.py [BLOCK [PERIOD]] (defaults 0.05, 0.2); prints READY once running.
"""

import asyncio
import sys
import time

BLOCK = float(sys.argv[1]) if len(sys.argv) > 1 else 0.05
PERIOD = float(sys.argv[2]) if len(sys.argv) > 2 else 0.2


async def blocker(tick: asyncio.Event) -> None:
    while True:
        await tick.wait()
        time.sleep(BLOCK)  # the loop is blocked: this step lasts BLOCK seconds


async def victim(tick: asyncio.Event) -> None:
    while True:
        await tick.wait()  # woken with the blocker, stepped after it


async def main() -> None:
    tick = asyncio.Event()
    tasks = [asyncio.create_task(blocker(tick), name="blocker")]
    tasks += [asyncio.create_task(victim(tick), name=f"victim-{i}") for i in range(4)]
    await asyncio.sleep(0.05)
    print("READY", flush=True)
    while True:
        await asyncio.sleep(PERIOD)
        tick.set()   # wakes the waiters in the order they waited: the blocker first
        tick.clear()


asyncio.run(main())

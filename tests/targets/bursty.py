"""A load that comes and goes, with an exact count of its own task steps.

Usage: bursty.py WORKERS SCHEDULE [WORK]

SCHEDULE is a comma-separated list of phases, ``on:SECONDS`` or ``off:SECONDS``,
repeated forever (``steady:SECONDS`` steps at a modest, constant pace).  While on,
each worker steps as fast as it can (``await asyncio.sleep(0)``), doing WORK
iterations of arithmetic per step (default 300: ~10 us, a small request handler);
while off, it sleeps until the next phase.  Every resumption of a coroutine after an
await that suspended is one task step, and is counted: every 0.2 s the target
prints ``STEPS <CLOCK_MONOTONIC seconds> <steps so far>``.  READY comes first.
"""

import asyncio
import sys
import time

steps = 0


def parse(schedule: str) -> list[tuple[str, float]]:
    phases = []
    for part in schedule.split(","):
        kind, seconds = part.split(":")
        assert kind in ("on", "off", "steady"), kind
        phases.append((kind, float(seconds)))
    return phases


class Schedule:
    def __init__(self, phases: list[tuple[str, float]]) -> None:
        self.phases = phases
        self.period = sum(s for _, s in phases)
        self.start = time.monotonic()

    def at(self, now: float) -> tuple[str, float]:
        """The phase at ``now`` and the seconds until it ends."""
        t = (now - self.start) % self.period
        for kind, seconds in self.phases:
            if t < seconds:
                return kind, seconds - t
            t -= seconds
        return self.phases[-1][0], 0.0


def work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


async def worker(schedule: Schedule, n: int) -> None:
    global steps
    steps += 1                         # the first step
    while True:
        kind, left = schedule.at(time.monotonic())
        if kind == "on":
            work(n)
            await asyncio.sleep(0)
        elif kind == "steady":
            work(n)
            await asyncio.sleep(0.002)
        else:
            await asyncio.sleep(left)
        steps += 1                     # resumed: one step


async def report() -> None:
    global steps
    steps += 1
    while True:
        print(f"STEPS {time.monotonic():.3f} {steps}", flush=True)
        await asyncio.sleep(0.2)
        steps += 1


async def main(workers: int, schedule: Schedule, n: int) -> None:
    global steps
    steps += 1                         # the main task's first step
    tasks = [asyncio.create_task(worker(schedule, n)) for _ in range(workers)]
    tasks.append(asyncio.create_task(report()))
    print("READY", flush=True)
    await asyncio.gather(*tasks)


asyncio.run(main(int(sys.argv[1]), Schedule(parse(sys.argv[2])),
                 int(sys.argv[3]) if len(sys.argv) > 3 else 300))

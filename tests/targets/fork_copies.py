"""N pending tasks, then copies of this process, made by fork over and over: each copy
holds the same N tasks in its memory (its loop does not run) for LIFE seconds, COPIES
of them at a time.  A copy costs its maker nothing (the pages are shared); a tracer
that reads each new process once pays for N tasks every time.

usage: fork_copies.py N COPIES LIFE; prints READY once the tasks exist.  The copies
die with this process (PR_SET_PDEATHSIG).
"""

import asyncio
import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1


def copy(life: float) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    time.sleep(life)
    os._exit(0)


async def main(n: int, copies: int, life: float) -> None:
    tasks = [asyncio.create_task(asyncio.sleep(3600)) for _ in range(n)]
    await asyncio.sleep(0.1)   # every task has started and is suspended
    print("READY", len(tasks), flush=True)
    children: set[int] = set()
    while True:
        for pid in list(children):
            if os.waitpid(pid, os.WNOHANG)[0]:
                children.discard(pid)
        while len(children) < copies:
            pid = os.fork()
            if pid == 0:
                copy(life)
            children.add(pid)
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))

"""An asyncio program that, on SIGUSR1, execs the same interpreter into another asyncio
program of another shape, keeping its PID and its executable.

Usage: reexec.py FIRST SECOND [busy]: FIRST tasks wait on an event (plus, with
``busy``, two tasks that pass a token back and forth as fast as they can), then READY;
on SIGUSR1 the process runs ``sys.executable`` again on ``reexec.py --then SECOND
[busy]``: SECOND tasks parked one coroutine deeper, under other names, and READY
again.  Pending tasks: FIRST (or SECOND) + 1 (main) + 2 (with ``busy``).
"""

import asyncio
import os
import signal
import sys


async def first_waiter(event: asyncio.Event) -> None:
    await event.wait()


async def second_inner(event: asyncio.Event) -> None:
    await event.wait()


async def second_waiter(event: asyncio.Event) -> None:
    await second_inner(event)


async def ping(inbox: asyncio.Queue, outbox: asyncio.Queue) -> None:
    while True:
        outbox.put_nowait(await inbox.get())


def exec_again(count: str, busy: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, "-u", __file__, "--then", count, *busy])


async def main() -> None:
    args = sys.argv[1:]
    second = args[0] == "--then"
    if second:
        args = args[1:]
    count, busy = int(args[0]), args[-1:] if args[-1] == "busy" else []
    event = asyncio.Event()
    coro, prefix = (second_waiter, "second") if second else (first_waiter, "first")
    tasks = [asyncio.create_task(coro(event), name=f"{prefix}-{i}") for i in range(count)]
    if busy:
        a, b = asyncio.Queue(), asyncio.Queue()
        tasks += [asyncio.create_task(ping(a, b), name="ping"),
                  asyncio.create_task(ping(b, a), name="pong")]
        a.put_nowait(0)
    if not second:
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, exec_again, args[1], busy)
    await asyncio.sleep(0.1)
    print("READY", prefix, flush=True)
    await asyncio.gather(*tasks)


asyncio.run(main())

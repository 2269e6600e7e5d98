"""Tasks whose steps are short and come at known intervals, on two threads' loops.

On the main thread's loop: "sleeper-N" tasks sleep GAP seconds between steps, and a
"reader" task awaits a socket that a plain thread writes to every GAP seconds.  On a
second thread's loop ("loop-2"): "sleeper-2-N" tasks, the same as the main ones.
Every loop waits for I/O at least GAP seconds between two steps of one task; no step
lasts more than a few microseconds of work.

Usage: known_gaps.py [GAP] (default 0.1); prints READY once every task has stepped.
"""

import asyncio
import socket
import sys
import threading
import time

GAP = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1


async def sleeper() -> None:
    while True:
        await asyncio.sleep(GAP)


async def reader(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    while await loop.sock_recv(sock, 64):
        pass


def writer(sock: socket.socket) -> None:
    while True:
        time.sleep(GAP)
        sock.send(b"x")


async def other_loop(started: threading.Event) -> None:
    tasks = [asyncio.create_task(sleeper(), name=f"sleeper-2-{i}") for i in range(2)]
    await asyncio.sleep(0)
    started.set()
    await asyncio.gather(*tasks)


async def main() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    tasks = [asyncio.create_task(sleeper(), name=f"sleeper-{i}") for i in range(3)]
    tasks.append(asyncio.create_task(reader(ours), name="reader"))
    threading.Thread(target=writer, args=(theirs,), daemon=True).start()
    started = threading.Event()
    threading.Thread(target=lambda: asyncio.run(other_loop(started)), name="loop-2",
                     daemon=True).start()
    started.wait()
    await asyncio.sleep(GAP)
    print("READY", flush=True)
    await asyncio.gather(*tasks)


asyncio.run(main())

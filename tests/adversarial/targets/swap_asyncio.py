"""A busy asyncio process that, on SIGUSR1, maps another file over the first mapping of
its own _asyncio module (MAP_FIXED: same address, same length, same protection), as a
hostile traced process could, to make a tracer's next attach by path land in that file.
Its _asyncio code (the executable mapping) stays in place, so the loop keeps running.
Usage: swap_asyncio.py DECOY [N]; the mapping to replace is read, at the signal, from
DECOY.range ("start end perms offset" in hex: a chroot may have no /proc to find it);
prints READY once the workers run, SWAPPED (or SWAP-FAILED and why) after the signal.
"""

import asyncio
import ctypes
import mmap
import os
import signal
import sys

DECOY = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]


def first_asyncio_mapping() -> tuple[int, int, str, int]:
    with open(DECOY + ".range") as stream:
        start, end, perms, offset = stream.read().split()
    return int(start, 16), int(end, 16), perms, int(offset, 16)


def swap(_signum: int, _frame: object) -> None:
    try:
        start, end, perms, offset = first_asyncio_mapping()
        prot = (mmap.PROT_READ if "r" in perms else 0) | (mmap.PROT_EXEC if "x" in perms else 0)
        fd = os.open(DECOY, os.O_RDONLY)
        try:
            got = libc.mmap(start, end - start, prot, mmap.MAP_PRIVATE | 0x10, fd, offset)
        finally:
            os.close(fd)
        if got != start:
            raise OSError(ctypes.get_errno(), "mmap MAP_FIXED failed")
        print(f"SWAPPED {start:x}-{end:x}", flush=True)
    except Exception as exc:
        print(f"SWAP-FAILED {exc}", flush=True)


async def worker(inbox: asyncio.Queue, outbox: asyncio.Queue) -> None:
    while True:
        item = await inbox.get()
        await asyncio.sleep(0)
        outbox.put_nowait(item)


async def main(n: int) -> None:
    queues = [asyncio.Queue() for _ in range(n)]
    workers = [asyncio.create_task(worker(queues[i], queues[(i + 1) % n])) for i in range(n)]
    for q in queues[: max(1, n // 2)]:
        q.put_nowait(0)
    await asyncio.sleep(0.1)
    print("READY", flush=True)
    await asyncio.gather(*workers)


signal.signal(signal.SIGUSR1, swap)
asyncio.run(main(int(sys.argv[2]) if len(sys.argv) > 2 else 20))

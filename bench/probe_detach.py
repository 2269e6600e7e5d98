#!/usr/bin/env python3
"""What removing uprobes costs: the basis of the daemon's limit on probed files.

Copies a shared library into FILES distinct files (a user with many copies of
_asyncio), places PROBES perf-event uprobes in each (aiobpf places two per _asyncio
file) with an empty BPF program, and times closing them: one after another (as the
daemon does at a window's end and at stop), then the same number again closed from
as many threads at once (to show whether the kernel overlaps them).  Prints seconds
per probe and per file.

Run as root: ``.venv/bin/python bench/probe_detach.py [--files 8] [--probes 2]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LIBRARY = Path("/usr/lib/x86_64-linux-gnu/libc.so.6")
PAGE = 4096


def _attach(lib: object, fn_fd: int, paths: list[Path], probes: int) -> list[int]:
    fds = []
    for i, path in enumerate(paths):
        for k in range(probes):
            offset = PAGE * (k + 1)
            fd = lib.bpf_attach_uprobe(fn_fd, 0, f"aiobpf_bench_{os.getpid()}_{i}_{k}".encode(),
                                       str(path).encode(), offset, -1)
            if fd < 0:
                raise SystemExit(f"could not attach a uprobe to {path} (+{offset:#x})")
            fds.append(fd)
    return fds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--probes", type=int, default=2, help="probes per file")
    args = parser.parse_args()
    from bcc import BPF  # Debian's python3-bpfcc
    bpf = BPF(text="int hit(void *ctx) { return 0; }")
    fn = bpf.load_func(b"hit", BPF.KPROBE)
    lib = __import__("bcc").lib
    with tempfile.TemporaryDirectory(prefix="aiobpf-detach-") as tmp:
        paths = []
        for i in range(args.files):
            paths.append(Path(tmp) / f"copy{i}.so")
            shutil.copyfile(LIBRARY, paths[-1])
        fds = _attach(lib, fn.fd, paths, args.probes)
        started = time.monotonic()
        for fd in fds:
            lib.bpf_close_perf_event_fd(fd)
        serial = time.monotonic() - started
        fds = _attach(lib, fn.fd, paths, args.probes)
        started = time.monotonic()
        with ThreadPoolExecutor(len(fds)) as pool:
            list(pool.map(lib.bpf_close_perf_event_fd, fds))
        threaded = time.monotonic() - started
    bpf.cleanup()
    n = len(fds)
    print(f"{args.files} files x {args.probes} probes = {n} uprobes")
    print(f"  one after another: {serial:.2f} s ({serial / n * 1e3:.0f} ms per probe, "
          f"{serial / args.files:.2f} s per file)")
    print(f"  {n} threads at once: {threaded:.2f} s (ratio to one after another: "
          f"{threaded / serial:.2f})")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What removing uprobes costs, for each kind aiobpf can place (aiobpf/bpf/uprobes.py):
the time a capture window's end keeps the probes in place, and the basis of the
daemon's limit on probed files.

Copies a shared library into FILES distinct files (a user with many copies of
_asyncio), places PROBES uprobes in each (aiobpf places four per 3.12+ _asyncio file,
two on 3.11) with an empty BPF program, and times their removal through aiobpf's own
``Uprobes.remove``: perf events one after another, BPF links all at once from threads.
The two kinds alternate over --repeat rounds in one run; prints the medians and their
ratio (perf events / links).  With --hits, also what a hit of each kind costs, as the
daemon measures it (aiobpf/collector/probe_cost.py: a uprobe, one on an instruction
stepped out of line, a uprobe with a uretprobe), the two kinds alternating.

Run as root: ``.venv/bin/python bench/probe_detach.py [--files 1] [--probes 4]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiobpf.bpf.uprobes import ENTRY, LINKS, PERF, RETURN, Uprobes

LIBRARY = Path("/usr/lib/x86_64-linux-gnu/libc.so.6")
PAGE = 4096


def _place(uprobes: Uprobes, fn_fd: int, paths: list[Path], probes: int) -> list[int]:
    fds = []
    for i, path in enumerate(paths):
        for k in range(probes):
            kind = RETURN if k == probes - 1 and probes > 2 else ENTRY   # as Task.__init__'s
            fds.append(uprobes.place(fn_fd, str(path), PAGE * (k + 1), kind,
                                     f"aiobpf_bench_{i}_{k}_{kind}"))
    return fds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--probes", type=int, default=4, help="probes per file")
    parser.add_argument("--repeat", type=int, default=8, help="rounds of both kinds")
    parser.add_argument("--hits", action="store_true", help="also what a hit costs")
    args = parser.parse_args()
    from bcc import BPF  # Debian's python3-bpfcc
    bpf = BPF(text="int hit_perf(void *ctx) { return 0; }\n"
                   "int hit_link(void *ctx) { return 0; }")
    lib = __import__("bcc").lib
    kinds = {PERF: Uprobes(PERF, lib), LINKS: Uprobes(LINKS, lib)}
    programs = {kind: bpf.load_func(f"hit_{'perf' if kind == PERF else 'link'}".encode(),
                                    BPF.KPROBE, attach_type=uprobes.load_type).fd
                for kind, uprobes in kinds.items()}
    took: dict[str, list[float]] = {PERF: [], LINKS: []}
    with tempfile.TemporaryDirectory(prefix="aiobpf-detach-") as tmp:
        paths = []
        for i in range(args.files):
            paths.append(Path(tmp) / f"copy{i}.so")
            shutil.copyfile(LIBRARY, paths[-1])
        for _ in range(args.repeat):
            for kind, uprobes in kinds.items():
                fds = _place(uprobes, programs[kind], paths, args.probes)
                time.sleep(0.05)
                started = time.monotonic()
                uprobes.remove(fds)
                took[kind].append(time.monotonic() - started)
    bpf.cleanup()
    n = args.files * args.probes
    print(f"{args.files} file(s) x {args.probes} probes = {n} uprobes, "
          f"median of {args.repeat} removals of each kind, alternating")
    for kind, runs in took.items():
        median = statistics.median(runs)
        print(f"  {kind:5}: {median:.3f} s ({median / n * 1e3:.0f} ms per probe, "
              f"{median / args.files:.3f} s per file; {min(runs):.3f}-{max(runs):.3f} s)")
    ratio = statistics.median(took[PERF]) / statistics.median(took[LINKS])
    print(f"  perf events / links: {ratio:.1f}x")
    if args.hits:
        _hits(args.repeat)


def _hits(repeat: int) -> None:
    """Hit costs of both kinds through aiobpf's own Capture and calibration."""
    from aiobpf.bpf.capture import Capture
    from aiobpf.collector import probe_cost

    captures = {kind: Capture(uprobes=kind) for kind in (PERF, LINKS)}
    costs: dict[str, list[probe_cost.ProbeCosts]] = {PERF: [], LINKS: []}
    try:
        for _ in range(repeat):
            for kind, capture in captures.items():
                costs[kind].append(probe_cost.measure(capture))
    finally:
        for capture in captures.values():
            capture.close()
    print(f"a hit, median of {repeat} calibrations of each kind, alternating (us):")
    for field in ("trap_s", "stepped_trap_s", "created_s"):
        perf, links = (statistics.median(getattr(c, field) for c in costs[k]) * 1e6
                       for k in (PERF, LINKS))
        print(f"  {field:15} perf {perf:6.2f}  links {links:6.2f}  links / perf {links / perf:.2f}")


if __name__ == "__main__":
    main()

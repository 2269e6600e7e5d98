"""aiobpf top: a live view of where a process's tasks spend their CPU, and where they wait."""

from __future__ import annotations

import argparse
import curses
import sys
import time
from collections.abc import Callable

from aiobpf import errors
from aiobpf.bpf.profile import ProfilerUnavailable
from aiobpf.cli.common import pid_argument, stop_on_signals
from aiobpf.cli.profile import CPU_RATE_HZ, positive
from aiobpf.collector.cpu_samples import CpuSampling
from aiobpf.collector.snapshot import Collector
from aiobpf.collector.target import open_target
from aiobpf.errors.translate import translate_errors
from aiobpf.exporters.profile.top import TopWindow, lines

Draw = Callable[[list[str]], None]


class TopCommand:
    """A live view of PID's asyncio tasks, refreshed every --interval seconds:

    - tasks by their share of the CPU samples of the last --window seconds (sampled as
      aiobpf profile --mode cpu does: BPF on each thread's CPU clock, --rate Hz), each
      with its chain (root task > ... > task) and the frame it executed most;
    - the share of samples outside any task (the event loop itself, callbacks);
    - where the pending tasks wait: tasks counted by await site.

    q or Ctrl-C quits. In a terminal the view fills the screen (curses; fine over SSH);
    with --plain, or when stdout is not a terminal, each refresh is printed as a block
    of lines.

    examples:
      sudo aiobpf top 1234
      sudo aiobpf top 1234 --plain --iterations 5 > top.txt"""

    name = "top"
    help = "live view: tasks by CPU share, and where tasks wait"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        pid_argument(parser, capture=False)
        parser.add_argument("--rate", type=positive, default=CPU_RATE_HZ, metavar="HZ",
                            help=f"CPU samples per second of each thread's CPU time "
                                 f"(default {CPU_RATE_HZ:g})")
        parser.add_argument("--window", type=positive, default=10.0, metavar="SECONDS",
                            help="the shares cover this many last seconds (default 10)")
        parser.add_argument("--interval", type=positive, default=1.0, metavar="SECONDS",
                            help="seconds between refreshes (default 1)")
        parser.add_argument("--plain", action="store_true",
                            help="print each refresh as lines instead of a full-screen view")
        parser.add_argument("--iterations", type=int, metavar="N",
                            help="quit after N refreshes (default: on q or Ctrl-C)")

    def run(self, args: argparse.Namespace) -> int:
        with translate_errors(args.pid):
            target = open_target(args.pid, use_dwarf=not args.no_dwarf,
                                 debug_dirs=args.debug_dir)
        collector = Collector(target)
        try:
            try:
                sampling = CpuSampling(collector, args.rate, refresh_s=args.interval)
            except ProfilerUnavailable as exc:
                raise errors.AiobpfError(f"cannot sample CPU time: {exc}",
                                         "see aiobpf doctor") from None
            try:
                with translate_errors(args.pid), stop_on_signals() as stopped:
                    if args.plain or not sys.stdout.isatty():
                        self._loop(args, sampling, _print, stopped)
                    else:
                        curses.wrapper(self._screen, args, sampling, stopped)
            finally:
                sampling.close()
        finally:
            collector.close()
            target.close()
        return 0

    def _screen(self, screen: curses.window, args: argparse.Namespace,
                sampling: CpuSampling, stopped: Callable[[], bool]) -> None:
        curses.curs_set(0)
        screen.nodelay(True)
        quit_asked = False

        def keys() -> bool:
            nonlocal quit_asked
            while (key := screen.getch()) != -1:
                quit_asked = quit_asked or key in (ord("q"), ord("Q"))
            return quit_asked or stopped()

        def draw(text: list[str]) -> None:
            height, width = screen.getmaxyx()
            screen.erase()
            for y, line in enumerate(text[:height - 1]):
                screen.addnstr(y, 0, line, width - 1)
            screen.addnstr(height - 1, 0, "q: quit", width - 1, curses.A_DIM)
            screen.refresh()

        draw([f"aiobpf top: starting (compiling the sampler for process {args.pid})..."])
        self._loop(args, sampling, draw, keys, size=lambda: screen.getmaxyx())

    @staticmethod
    def _loop(args: argparse.Namespace, sampling: CpuSampling, draw: Draw,
              stopped: Callable[[], bool],
              size: Callable[[], tuple[int, int]] = lambda: (40, 120)) -> None:
        window = TopWindow(args.window)
        started = time.monotonic()
        batches = sampling.batches(float("inf"), stopped)
        for refreshes, (snapshot, _before, samples) in enumerate(batches, start=1):
            window.add(time.monotonic(), samples)
            height, width = size()
            header = (f"aiobpf top: process {args.pid} (Python {snapshot.python_version}), "
                      f"{args.rate:g} Hz of CPU a thread, {time.monotonic() - started:.0f} s")
            draw(lines(window, snapshot, header, width=max(width, 40),
                       rows=max((height - 8) // 2, 3)))
            if args.iterations is not None and refreshes >= args.iterations:
                return


def _print(text: list[str]) -> None:
    print("\n".join(text) + "\n", flush=True)

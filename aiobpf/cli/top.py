"""aiobpf top: a live view of where a process's tasks spend their CPU, and where they wait."""

from __future__ import annotations

import argparse
import curses
import os
import sys
import time
from collections.abc import Callable

from aiobpf import errors
from aiobpf.bpf.capture import Capture
from aiobpf.bpf.profile import ProfilerUnavailable
from aiobpf.bpf.program import CaptureUnavailable
from aiobpf.cli.common import pid_argument, stop_on_signals
from aiobpf.cli.profile import CPU_RATE_HZ, positive
from aiobpf.collector.cpu_samples import CpuSampling
from aiobpf.collector.snapshot import Collector
from aiobpf.collector.target import Target, open_target
from aiobpf.errors.translate import translate_errors
from aiobpf.exporters.profile.top import (
    StepWindow,
    TaskSteps,
    TopWindow,
    WaitWindow,
    lines,
    waiting_sites,
)

Draw = Callable[[list[str]], None]


class TopCommand:
    """A live view of PID's asyncio tasks, refreshed every --interval seconds:

    - tasks by their share of the CPU samples of the last --window seconds (sampled as
      aiobpf profile --mode cpu does: BPF on each thread's CPU clock, --rate Hz), each
      with its chain (root task > ... > task) and the frame it executed most;
    - each task's steps per second over the window and its longest step since top
      started, counted in kernel space by the capture program (the probes of aiobpf
      trace, on the steps of PID's asyncio module; a few microseconds a step: --no-steps
      leaves them off, and the view says when they are not available and why);
    - the share of samples outside any task (the event loop itself, callbacks);
    - where tasks wait (the wall-time view): each await site's share of the pending
      tasks' time over the window (every refresh counts each pending task once), and
      its tasks now.

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
        parser.add_argument("--no-steps", action="store_true",
                            help="no steps/s and longest step: place no probes on task "
                                 "steps (they cost the target a few microseconds a step)")
        parser.add_argument("--plain", action="store_true",
                            help="print each refresh as lines instead of a full-screen view")
        parser.add_argument("--iterations", type=int, metavar="N",
                            help="quit after N refreshes (default: on q or Ctrl-C)")

    def run(self, args: argparse.Namespace) -> int:
        with translate_errors(args.pid):
            target = open_target(args.pid, use_dwarf=not args.no_dwarf,
                                 debug_dirs=args.debug_dir)
        collector = Collector(target)
        steps: StepSource | None = None
        try:
            try:
                sampling = CpuSampling(collector, args.rate, refresh_s=args.interval)
            except ProfilerUnavailable as exc:
                raise errors.AiobpfError(f"cannot sample CPU time: {exc}",
                                         "see aiobpf doctor") from None
            try:
                steps = StepSource(target, args.window, off=args.no_steps)
                with translate_errors(args.pid), stop_on_signals() as stopped:
                    if args.plain or not sys.stdout.isatty():
                        self._loop(args, sampling, steps, _print, stopped)
                    else:
                        # The terminal's own size, not an exported COLUMNS/LINES that
                        # no longer matches it (curses would take those first).
                        os.environ.pop("COLUMNS", None)
                        os.environ.pop("LINES", None)
                        curses.wrapper(self._screen, args, sampling, steps, stopped)
            finally:
                if steps is not None:
                    steps.close()
                sampling.close()
        finally:
            collector.close()
            target.close()
        return 0

    def _screen(self, screen: curses.window, args: argparse.Namespace,
                sampling: CpuSampling, steps: StepSource, stopped: Callable[[], bool]
                ) -> None:
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
        self._loop(args, sampling, steps, draw, keys, size=lambda: screen.getmaxyx())

    @staticmethod
    def _loop(args: argparse.Namespace, sampling: CpuSampling, steps: StepSource,
              draw: Draw, stopped: Callable[[], bool],
              size: Callable[[], tuple[int, int]] = lambda: (40, 120)) -> None:
        window, waits = TopWindow(args.window), WaitWindow(args.window)
        started = time.monotonic()
        batches = sampling.batches(float("inf"), stopped)
        for refreshes, batch in enumerate(batches, start=1):
            snapshot = batch.snapshot
            window.add(time.monotonic(), batch.samples)
            waits.add(time.monotonic(), waiting_sites(snapshot))
            steps.read()
            height, width = size()
            header = (f"aiobpf top: process {args.pid} (Python {snapshot.python_version}), "
                      f"{args.rate:g} Hz of CPU a thread, {time.monotonic() - started:.0f} s")
            draw(lines(window, snapshot, header, width=max(width, 40),
                       rows=max((height - 9) // 2, 3), steps=steps.window,
                       steps_note=steps.note, waits=waits))
            if args.iterations is not None and refreshes >= args.iterations:
                return


class StepSource:
    """Each task's steps and longest step, from the capture program's records of
    ``target`` (its probes attached for as long as top runs); ``window`` is None, and
    ``note`` says why, when they are off or not available."""

    def __init__(self, target: Target, window_s: float, off: bool) -> None:
        self.pid = target.pid
        self.capture: Capture | None = None
        self.window: StepWindow | None = None
        self.note = "off (--no-steps)"
        if off:
            return
        try:
            self.capture = Capture()
            attachment = self.capture.add(target)
        except CaptureUnavailable as exc:
            self.close()
            self.note = f"not available: the capture program did not load ({exc})"
            return
        if not attachment.active:
            self.close()
            why = "; ".join(attachment.notes) or "no probe sites in its asyncio module"
            self.note = f"not available: no probes on task steps ({why})"
            return
        self.window = StepWindow(time.monotonic(), window_s)

    def read(self) -> None:
        if self.capture is not None and self.window is not None:
            self.window.add(time.monotonic(), {
                task: TaskSteps(r.steps, r.max_step_ns)
                for task, r in self.capture.records(self.pid).items()})

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()
            self.capture = None


def _print(text: list[str]) -> None:
    print("\n".join(text) + "\n", flush=True)

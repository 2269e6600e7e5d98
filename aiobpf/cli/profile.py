"""aiobpf profile: where a process's tasks spend their time, as async stacks."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aiobpf import errors
from aiobpf.bpf.profile import ProfilerUnavailable
from aiobpf.cli.common import pid_argument, stop_on_signals
from aiobpf.collector.cpu_samples import CpuSampling
from aiobpf.collector.sampling import at_rate
from aiobpf.collector.snapshot import Collector
from aiobpf.collector.target import open_target
from aiobpf.errors.translate import translate_errors
from aiobpf.exporters.profile import collapsed, html, pprof, speedscope
from aiobpf.exporters.profile.profile import Profile
from aiobpf.exporters.profile.stacks import AwaitGraph, async_stacks, cpu_stack

FORMATS = ("collapsed", "speedscope", "html", "pprof")
CPU_RATE_HZ = 99.0    # per thread, on its CPU clock: off the beat of 100 Hz timers
WALL_RATE_HZ = 10.0   # reads of the whole task list
SUFFIXES = {".html": "html", ".htm": "html", ".json": "speedscope", ".pb": "pprof",
            ".gz": "pprof", ".pprof": "pprof"}


class ProfileCommand:
    """Sample PID and write where its tasks spend their time, as async stacks: root task,
    its coroutine frames, the task it awaits, ... down to the innermost frame (CPython
    3.15's --async-aware convention), on any CPython 3.11-3.15.

    --mode cpu (default): a BPF program samples each thread of PID on its own CPU clock
    (--rate per thread, default 99 Hz) and reads its Python frames in kernel space; a
    sample reads root task -> ... -> the running task's coroutines -> the synchronous
    frames it was executing. Samples outside any task keep their thread's stack under a
    [thread TID] node. Needs root (BPF); the target is not changed or stopped.

    --mode wall: at each sample, every task that awaits no other task counts its stack
    once, suspended or running: a stack's share is the share of the time tasks spent
    there (3.15's --async-mode all). The samples are memory reads of the whole task
    list (default 10 Hz); stderr says the effective rate when reads are slower.

    Formats: collapsed stacks (flamegraph.pl, inferno, speedscope, Pyroscope; default
    on stdout), speedscope JSON, a self-contained HTML flame graph (works offline:
    search, click to zoom), pprof (gzipped profile.proto: go tool pprof, Pyroscope,
    Grafana). With -o, the format follows the file's suffix unless --format says.

    examples:
      sudo aiobpf profile 1234 --duration 30 -o cpu.html
      sudo aiobpf profile 1234 --mode wall -o waits.pb.gz && go tool pprof -top waits.pb.gz
      sudo aiobpf profile 1234 | flamegraph.pl > cpu.svg"""

    name = "profile"
    help = "where tasks spend their time, as async stacks (flame graph, pprof, ...)"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        pid_argument(parser, capture=False)
        parser.add_argument("--mode", choices=("cpu", "wall"), default="cpu",
                            help="cpu (default): what each thread executes on its CPU clock, "
                                 "under the task it runs for; wall: every task's stack at "
                                 "each sample")
        parser.add_argument("--duration", type=positive, default=10.0, metavar="SECONDS",
                            help="how long to sample (default 10; Ctrl-C ends it sooner)")
        parser.add_argument("--rate", type=positive, metavar="HZ",
                            help="samples per second (default: 99 a thread on its CPU clock "
                                 "in cpu mode, 10 in wall mode)")
        parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                            help="write to FILE instead of stdout")
        parser.add_argument("--format", choices=FORMATS,
                            help="collapsed, speedscope, html or pprof (default: from "
                                 "FILE's suffix, else collapsed)")

    def run(self, args: argparse.Namespace) -> int:
        args.rate = args.rate or (CPU_RATE_HZ if args.mode == "cpu" else WALL_RATE_HZ)
        fmt = args.format or SUFFIXES.get(args.output.suffix if args.output else "",
                                          "collapsed")
        if fmt == "pprof" and args.output is None and sys.stdout.isatty():
            raise errors.AiobpfError("pprof is binary: not written to a terminal",
                                     "give -o FILE, or pipe it")
        profile = self._sample(args)
        self._report(profile, args.rate)
        self._write(profile, fmt, args.output)
        return 0

    def _sample(self, args: argparse.Namespace) -> Profile:
        with translate_errors(args.pid):
            target = open_target(args.pid, use_dwarf=not args.no_dwarf,
                                 debug_dirs=args.debug_dir)
        profile = Profile(args.pid, args.mode, args.rate)
        collector = Collector(target)
        try:
            with translate_errors(args.pid), stop_on_signals() as stopped:
                if args.mode == "cpu":
                    _sample_cpu(collector, profile, args.duration, stopped)
                else:
                    _sample_wall(collector, profile, args.duration, stopped)
        except (errors.ProcessExitedError, errors.ProcessNotFoundError):
            if not profile.stacks:
                raise
            print(f"aiobpf: process {args.pid} exited: writing the samples taken until then",
                  file=sys.stderr)
        finally:
            collector.close()
            target.close()
        return profile

    @staticmethod
    def _report(profile: Profile, asked: float) -> None:
        if profile.mode == "cpu":
            print(f"aiobpf: {profile.samples} samples in {profile.duration_s:.1f} s "
                  f"({asked:g} Hz a thread while it runs), {len(profile.stacks)} stacks",
                  file=sys.stderr)
            return
        rate = profile.effective_rate_hz
        slow = (f"; effective rate {rate:.1f} Hz of {asked:g} asked: one read of the "
                f"tasks takes longer than a period" if rate and rate < 0.9 * asked else "")
        print(f"aiobpf: {profile.samples} samples in {profile.duration_s:.1f} s, "
              f"{len(profile.stacks)} stacks{slow}", file=sys.stderr)

    @staticmethod
    def _write(profile: Profile, fmt: str, output: Path | None) -> None:
        data: str | bytes
        if fmt == "collapsed":
            data = "".join(collapsed.lines(profile))
        elif fmt == "speedscope":
            data = speedscope.render(profile)
        elif fmt == "html":
            data = html.render(profile)
        else:
            data = pprof.render(profile)
        if output is not None:
            if isinstance(data, str):
                output.write_text(data, encoding="utf-8")
            else:
                output.write_bytes(data)
            print(f"aiobpf: wrote {output} ({fmt})", file=sys.stderr)
        elif isinstance(data, str):
            sys.stdout.write(data)
        else:
            sys.stdout.buffer.write(data)


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _sample_wall(collector: Collector, profile: Profile, duration_s: float,
                 stopped: Callable[[], bool]) -> None:
    """Every leaf task's async stack, once per read of the task list."""
    first = None
    for at, snapshot in at_rate(lambda: collector.snapshot(details=False), profile.rate_hz,
                                duration_s, stopped):
        first = at if first is None else first
        profile.duration_s = at - first
        profile.samples += 1
        for _task, stack in async_stacks(snapshot):
            profile.add(stack)


def _sample_cpu(collector: Collector, profile: Profile, duration_s: float,
                stopped: Callable[[], bool]) -> None:
    """Each CPU sample's frames under the async stack of the task it ran for."""
    try:
        sampling = CpuSampling(collector, profile.rate_hz)
    except ProfilerUnavailable as exc:
        raise errors.AiobpfError(f"cannot profile CPU time: {exc}",
                                 "see aiobpf doctor; --mode wall needs no BPF") from None
    started = time.monotonic()
    try:
        def say_started(threads: int) -> None:
            print(f"aiobpf: sampling {threads} thread{'s' if threads != 1 else ''} of "
                  f"process {collector.target.pid} at {profile.rate_hz:g} Hz of CPU time for "
                  f"{duration_s:g} s (Ctrl-C ends it sooner)", file=sys.stderr, flush=True)

        for snapshot, before, samples in sampling.batches(duration_s, stopped, say_started):
            graphs = [AwaitGraph(snapshot)] + ([AwaitGraph(before)] if before else [])
            for sample in samples:
                profile.add(cpu_stack(sample, *graphs))
            profile.samples += len(samples)
    finally:
        sampling.close()
        profile.duration_s = time.monotonic() - started

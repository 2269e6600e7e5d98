"""aiobpf profile: where a process's tasks spend their time, as async stacks."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aiobpf import errors
from aiobpf.bpf.profile import ProfilerUnavailable
from aiobpf.cli.common import (
    daemon_error,
    daemon_socket,
    fell_back,
    pid_argument,
    stop_on_signals,
)
from aiobpf.collector.cpu_samples import CpuSampling
from aiobpf.collector.sampling import at_rate
from aiobpf.collector.snapshot import Collector
from aiobpf.collector.target import open_target
from aiobpf.errors.translate import translate_errors
from aiobpf.exporters.profile import collapsed, html, pprof, speedscope
from aiobpf.exporters.profile.profile import Profile
from aiobpf.exporters.profile.stacks import async_stacks, batch_stacks

FORMATS = ("collapsed", "speedscope", "html", "pprof")
CPU_RATE_HZ = 99.0    # per thread, on its CPU clock: off the beat of 100 Hz timers
WALL_RATE_HZ = 10.0   # reads of the whole task list
DAEMON_MARGIN_S = 60.0   # the daemon's answer may come this long after --duration
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

    When an aiobpf daemon traces PID with its continuous profiles on (profiles = true), a
    cpu profile is asked of it first, over its socket ($AIOBPF_SOCKET or
    /run/aiobpf/aiobpf.sock; root only, as dumps): it answers with its samples of the
    next --duration seconds, taken at its own rate (stderr says which). When it cannot
    serve what was asked (--mode wall, a --rate other than its own, a process it does
    not trace), one line on stderr says why and PID is sampled here; --no-daemon
    samples here always.

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
                                 "in cpu mode, or the daemon's rate when it answers; 10 in "
                                 "wall mode); a rate other than the daemon's is sampled here")
        parser.add_argument("--no-daemon", action="store_true",
                            help="sample here even if an aiobpf daemon profiles PID (by "
                                 "default a cpu profile is asked of it first)")
        parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                            help="write to FILE instead of stdout")
        parser.add_argument("--format", choices=FORMATS,
                            help="collapsed, speedscope, html or pprof (default: from "
                                 "FILE's suffix, else collapsed)")

    def run(self, args: argparse.Namespace) -> int:
        fmt = args.format or SUFFIXES.get(args.output.suffix if args.output else "",
                                          "collapsed")
        if fmt == "pprof" and args.output is None and sys.stdout.isatty():
            raise errors.AiobpfError("pprof is binary: not written to a terminal",
                                     "give -o FILE, or pipe it")
        profile = from_daemon(args)
        if profile is None:
            args.rate = args.rate or (CPU_RATE_HZ if args.mode == "cpu" else WALL_RATE_HZ)
            profile = self._sample(args)
        self._report(profile, profile.rate_hz)
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


def from_daemon(args: argparse.Namespace) -> Profile | None:
    """The daemon's samples of ``args.pid`` for ``args.duration`` seconds; None when no
    daemon answers (or it cannot serve what was asked: said on stderr in one line)."""
    if args.no_daemon:
        return None
    from aiobpf.daemon import dumps

    path = daemon_socket()
    if args.no_dwarf or args.debug_dir:
        if dumps.answers(path):   # the daemon reads with the layout it found: not these
            print("aiobpf: --no-dwarf and --debug-dir sample the process here, not through "
                  "the daemon", file=sys.stderr, flush=True)
        return None
    if not dumps.answers(path):
        return None
    asked = {"mode": args.mode, "rate": args.rate, "duration": args.duration}
    with stop_on_signals() as stopped:
        print(f"aiobpf: asking the daemon for {args.duration:g} s of samples of process "
              f"{args.pid} (Ctrl-C ends it sooner)", file=sys.stderr, flush=True)
        reply = dumps.request(path, {"pid": args.pid, "profile": asked},
                              timeout_s=args.duration + DAEMON_MARGIN_S, stopped=stopped)
    if reply is None or fell_back(reply, "sampling the process here"):
        return None
    if "error" in reply:
        raise daemon_error(reply)
    try:
        profile = Profile.from_document(reply.get("profile"))
    except ValueError as exc:
        raise errors.AiobpfError(f"the daemon's reply is not a profile: {exc}",
                                 "--no-daemon samples the process here") from None
    gone = any("exited" in str(note) for note in reply.get("notes", []))
    if gone and not profile.stacks:
        raise errors.ProcessExitedError(args.pid)
    if gone:
        print(f"aiobpf: process {args.pid} exited: writing the samples taken until then",
              file=sys.stderr)
    print(f"aiobpf: the daemon's samples, at its rate of {profile.rate_hz:g} Hz a thread "
          f"(its profile_rate; --no-daemon samples here at --rate)", file=sys.stderr)
    return profile


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

        for batch in sampling.batches(duration_s, stopped, say_started):
            for stack in batch_stacks(batch):
                profile.add(stack)
            profile.samples += len(batch.samples)
    finally:
        sampling.close()
        profile.duration_s = time.monotonic() - started

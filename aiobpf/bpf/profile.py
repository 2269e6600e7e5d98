"""The user side of profile.bpf.c: compile it, point it at a process's threads, and
read its samples.

One perf event per thread of the profiled process (the software CPU clock, at the
rate asked) runs the program; it reads the thread's interpreter frames and sends
them through a ring buffer.  The structures mirror profile.h; their sizes are checked
against what bcc compiled (``check_abi``).  Nothing is left in the kernel after
``close`` (perf events closed, the program unloaded with its module).
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent
MAX_FRAMES = 96        # AIOBPF_PROFILE_FRAMES
MAX_SPAN = 128         # AIOBPF_PROFILE_SPAN
NO_CFRAME = 0xFFFFFFFF
RING_PAGES = 64        # 256 KiB: ~150 samples of full depth; read every 50 ms
MAX_THREADS = 4096
_PERF_TYPE_SOFTWARE = 1
_PERF_COUNT_SW_CPU_CLOCK = 0


class ProfileConfig(ct.Structure):
    _fields_ = [("tstate_frame", ct.c_uint32), ("cframe_frame", ct.c_uint32),
                ("frame_previous", ct.c_uint32), ("frame_code", ct.c_uint32),
                ("frame_instr", ct.c_uint32), ("frame_owner", ct.c_uint32),
                ("frame_span", ct.c_uint32), ("pad", ct.c_uint32),
                ("ref_clear", ct.c_uint64)]


class ProfileFrame(ct.Structure):
    _fields_ = [("frame", ct.c_uint64), ("code", ct.c_uint64), ("instr", ct.c_uint64)]


class ProfileSample(ct.Structure):
    _fields_ = [("pid", ct.c_uint32), ("tid", ct.c_uint32), ("time_ns", ct.c_uint64),
                ("depth", ct.c_uint32), ("truncated", ct.c_uint8),
                ("unreadable", ct.c_uint8), ("pad", ct.c_uint8 * 2),
                ("frames", ProfileFrame * MAX_FRAMES), ("owners", ct.c_uint8 * MAX_FRAMES)]


class ProfilerUnavailable(Exception):
    """The kernel or bcc refused the profiler (the message says what)."""


@dataclass(frozen=True)
class RawFrame:
    frame: int      # address of the interpreter frame
    code: int       # code object
    instr: int      # instruction pointer
    owner: int      # who owns the frame (a generator, a thread, the C stack...)


@dataclass(frozen=True)
class RawSample:
    """One sample as the program took it: frames innermost first."""

    pid: int
    tid: int
    time_ns: int    # CLOCK_MONOTONIC
    frames: tuple[RawFrame, ...]
    truncated: bool
    unreadable: bool


def decode(sample: ProfileSample) -> RawSample:
    depth = min(sample.depth, MAX_FRAMES)
    return RawSample(sample.pid, sample.tid, sample.time_ns,
                     tuple(RawFrame(sample.frames[i].frame, sample.frames[i].code,
                                    sample.frames[i].instr, sample.owners[i])
                           for i in range(depth)),
                     bool(sample.truncated), bool(sample.unreadable))


class CpuProfiler:
    """profile.bpf.c loaded, sampling the threads it is given."""

    def __init__(self, on_sample: Callable[[RawSample], None]) -> None:
        try:
            from bcc import BPF
            from bcc.libbcc import lib
        except ImportError as exc:
            raise ProfilerUnavailable(f"bcc is not installed ({exc})") from None
        self._lib = lib
        try:
            self.bpf = BPF(src_file=str(BPF_DIR / "profile.bpf.c").encode(),
                           cflags=[f"-I{BPF_DIR}", f"-DRING_PAGES={RING_PAGES}",
                                   f"-DMAX_THREADS={MAX_THREADS}",
                                   f"-DSAMPLE_SIZE={ct.sizeof(ProfileSample)}",
                                   f"-DCONFIG_SIZE={ct.sizeof(ProfileConfig)}"])
            self._fn = self.bpf.load_func(b"on_cpu_clock", BPF.PERF_EVENT)
        except Exception as exc:  # bcc raises bare Exceptions
            raise ProfilerUnavailable(f"the profiler's BPF program did not load: {exc}") from None
        check_abi(self.bpf)
        self._events: dict[int, dict[int, int]] = {}   # pid -> tid -> perf event fd

        def received(_ctx: object, data: int, _size: int) -> int:
            on_sample(decode(ct.cast(data, ct.POINTER(ProfileSample)).contents))
            return 0

        self.bpf["samples"].open_ring_buffer(received)

    def follow(self, pid: int, config: ProfileConfig, threads: dict[int, int],
               rate_hz: float) -> None:
        """Sample ``pid``'s ``threads`` (native id -> PyThreadState) at ``rate_hz``; its
        threads no longer listed stop being sampled."""
        self.bpf["configs"][ct.c_uint32(pid)] = config
        states = self.bpf["thread_states"]
        events = self._events.setdefault(pid, {})
        for tid in list(events):
            if tid not in threads:
                self._lib.bpf_close_perf_event_fd(events.pop(tid))
                states.pop(ct.c_uint32(tid), None)
        room = MAX_THREADS - self.threads + len(events)
        for tid, tstate in list(threads.items())[:max(room, 0)]:
            states[ct.c_uint32(tid)] = ct.c_uint64(tstate)
            if tid in events:
                continue
            fd = self._lib.bpf_attach_perf_event(self._fn.fd, _PERF_TYPE_SOFTWARE,
                                                 _PERF_COUNT_SW_CPU_CLOCK, 0, int(rate_hz),
                                                 tid, -1, -1)
            if fd >= 0:
                events[tid] = fd
            elif not events and tid == pid:
                raise ProfilerUnavailable(f"the kernel refused a CPU-clock perf event for "
                                          f"thread {tid} (errno {ct.get_errno() or '?'})")

    def forget(self, pid: int) -> None:
        """Stop sampling ``pid``."""
        states = self.bpf["thread_states"]
        for tid, fd in self._events.pop(pid, {}).items():
            self._lib.bpf_close_perf_event_fd(fd)
            states.pop(ct.c_uint32(tid), None)
        self.bpf["configs"].pop(ct.c_uint32(pid), None)

    @property
    def threads(self) -> int:
        return sum(len(events) for events in self._events.values())

    def poll(self, timeout_ms: int) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    def lost(self) -> int:
        return int(self.bpf["lost"][ct.c_int(0)].value)

    def close(self) -> None:
        for events in self._events.values():
            for fd in events.values():
                self._lib.bpf_close_perf_event_fd(fd)
        self._events.clear()
        self.bpf.cleanup()


def check_abi(bpf: object) -> None:
    """The ctypes mirror against the structures bcc compiled (profile.h)."""
    leaf = bpf["configs"].Leaf   # type: ignore[index]
    if ct.sizeof(leaf) != ct.sizeof(ProfileConfig):
        raise ProfilerUnavailable(f"profile.h and aiobpf/bpf/profile.py disagree: struct "
                                  f"profile_config is {ct.sizeof(leaf)} bytes, the mirror "
                                  f"{ct.sizeof(ProfileConfig)}")

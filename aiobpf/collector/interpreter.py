"""Interpreters and thread states of a target, and the Python modules they loaded."""

from __future__ import annotations

from dataclasses import dataclass

from aiobpf.collector.objects import Objects

MAX_INTERPRETERS = 4096
MAX_THREADS = 1 << 16


@dataclass
class ThreadState:
    addr: int
    interp: int
    thread_id: int         # pthread id, what threading.get_ident() returns
    native_id: int         # kernel thread id
    current_frame: int     # innermost interpreter frame (0 when idle in C)
    running_loop: int = 0  # 3.14+: the loop running on this thread
    running_task: int = 0  # 3.14+: the task stepping on this thread


def interpreters(objs: Objects, runtime: int) -> list[int]:
    L = objs.layout.values
    out: list[int] = []
    interp = objs.mem.ptr(runtime + L["runtime.interpreters_head"])
    while interp and len(out) < MAX_INTERPRETERS and interp not in out:
        out.append(interp)
        interp = objs.mem.ptr(interp + L["interp.next"])
    return out


def thread_states(objs: Objects, interp: int) -> list[ThreadState]:
    L = objs.layout.values
    mem = objs.mem
    out: list[ThreadState] = []
    seen: set[int] = set()
    tstate = mem.ptr(interp + L["interp.threads_head"])
    while tstate and len(out) < MAX_THREADS and tstate not in seen:
        seen.add(tstate)
        if "tstate.current_frame" in L:
            frame = mem.ptr(tstate + L["tstate.current_frame"])
        else:
            cframe = mem.ptr(tstate + L["tstate.cframe"])
            frame = mem.ptr(cframe + L["cframe.current_frame"]) if cframe else 0
        ts = ThreadState(tstate, interp, mem.u64(tstate + L["tstate.thread_id"]),
                         mem.u64(tstate + L["tstate.native_thread_id"]), frame)
        if "tstate.asyncio_running_task" in L:
            ts.running_loop = mem.ptr(tstate + L["tstate.asyncio_running_loop"])
            ts.running_task = mem.ptr(tstate + L["tstate.asyncio_running_task"])
        out.append(ts)
        tstate = mem.ptr(tstate + L["tstate.next"])
    return out


def modules(objs: Objects, interp: int) -> dict[str, int]:
    """sys.modules of an interpreter: name -> module object."""
    addr = objs.mem.ptr(interp + objs.layout["interp.modules"])
    return objs.dict_str_items(addr) if addr else {}


def module_globals(objs: Objects, module: int) -> dict[str, int]:
    return objs.dict_str_items(objs.mem.ptr(module + objs.layout["module.dict"]))

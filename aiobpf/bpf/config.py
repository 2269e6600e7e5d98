"""What the capture programs are told about a traced process: its layout as
``struct target_config`` (abi.TargetConfig), and which probes it gets."""

from __future__ import annotations

import ctypes as ct

from aiobpf.bpf.abi import MAX_RESUME_OPS, TargetConfig
from aiobpf.collector.target import Target


def target_config(target: Target, slot: int) -> TargetConfig:
    """The per-process settings of the BPF programs, from the target's layout; ``slot``:
    its entry in the ``settings`` map."""
    L = target.layout.values
    c = target.layout.consts
    cfg = TargetConfig()
    cfg.ob_type = L["object.type"]
    cfg.task_coro, cfg.task_name = L["task.coro"], L["task.name"]
    cfg.task_fut_waiter, cfg.task_state = L["task.fut_waiter"], L["task.state"]
    cfg.task_awaited_by = L.get("task.awaited_by", 0)
    cfg.task_awaited_by_is_set = L.get("task.awaited_by_is_set", 0)
    cfg.wrapper_task = L["stepwrapper.task"]
    cfg.gen_frame_state, cfg.gen_iframe = L["gen.frame_state"], L["gen.iframe"]
    cfg.frame_code, cfg.frame_instr = L["frame.code"], L["frame.instr_ptr"]
    cfg.stack_is_pointer = int("frame.stackpointer" in L)
    cfg.frame_stack = L["frame.stackpointer"] if cfg.stack_is_pointer else L["frame.stacktop"]
    cfg.frame_localsplus = L["frame.localsplus"]
    # A generator's header, its frame and the first slots of the frame's locals and
    # stack, where the awaited object usually is: one read instead of two.
    cfg.gen_span = min(cfg.gen_iframe + cfg.frame_localsplus + 8 * 16, 504)
    cfg.gen_min_span = max(cfg.gen_frame_state + 1, cfg.gen_iframe + 8 + max(
        cfg.frame_code, cfg.frame_instr, cfg.frame_stack))
    cfg.task_span = max(cfg.task_coro, cfg.task_name, cfg.task_fut_waiter, cfg.task_state,
                        cfg.task_awaited_by, cfg.task_awaited_by_is_set) + 8
    cfg.st_created, cfg.st_executing = L["enum.FRAME_CREATED"], L["enum.FRAME_EXECUTING"]
    cfg.st_suspended, cfg.st_cleared = L["enum.FRAME_SUSPENDED"], L["enum.FRAME_CLEARED"]
    yf = L.get("enum.FRAME_SUSPENDED_YIELD_FROM", 127)
    cfg.st_yf = yf
    cfg.st_yf_locked = L.get("enum.FRAME_SUSPENDED_YIELD_FROM_LOCKED", yf)
    cfg.yf_by_oparg = int("enum.FRAME_SUSPENDED_YIELD_FROM" not in L)
    cfg.yf_depth = c.yield_from_depth
    cfg.resume_offset = c.resume_offset
    ops = sorted(c.resume_opcodes)[:MAX_RESUME_OPS]
    ops += [ops[0] if ops else 0] * (MAX_RESUME_OPS - len(ops))
    cfg.resume_ops = (ct.c_uint8 * MAX_RESUME_OPS)(*ops)
    cfg.ref_clear = ~c.stackref_clear & 0xFFFF_FFFF_FFFF_FFFF
    cfg.int_tag = c.stackref_int_tag or 0
    types = target.core.image.symbols({"PyCoro_Type", "PyGen_Type", "PyAsyncGen_Type"})
    cfg.coro_type = target.core.addr(types["PyCoro_Type"])
    cfg.gen_type = target.core.addr(types["PyGen_Type"])
    cfg.asyncgen_type = target.core.addr(types["PyAsyncGen_Type"])
    cfg.pending_state = L["enum.STATE_PENDING"]
    cfg.slot = slot
    return cfg


def counts_creations(target: Target) -> bool:
    """Whether Task.__init__ is probed (3.12+, where tasks may start eagerly in it)."""
    return target.version[:2] >= (3, 12)

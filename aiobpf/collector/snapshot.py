"""Take a snapshot of every asyncio task of a target: the collector's memory path.

The target keeps running while it is read.  A task whose objects change under
the reader (a torn read: a pointer to memory that was just freed) is read
again from fresh pages; if that fails too it is kept, marked with the error,
rather than dropped.  Only the process exiting, or the kernel refusing reads,
ends a snapshot early.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from aiobpf.bpf.abi import CAPTURE_SUSPENDED, TaskRecord
from aiobpf.bpf.records import frames_of
from aiobpf.collector.awaiters import AwaiterIndex
from aiobpf.collector.frames import Chain, Frames
from aiobpf.collector.interpreter import ThreadState, interpreters, modules, thread_states
from aiobpf.collector.memory import ReadFault, RemoteMemory
from aiobpf.collector.model import Parked, Snapshot, Stacks, Task, Thread
from aiobpf.collector.objects import DecodeError, Objects
from aiobpf.collector.speedups import TaskLayout, task_heads
from aiobpf.collector.target import NoAsyncio, Target
from aiobpf.collector.tasks import (
    MAX_TASKS,
    RawTask,
    TaskRefs,
    decode_task,
    linked_tasks,
    loop_thread_id,
    name_tasks,
    read_task,
    registered_tasks,
    task_name,
    task_span,
)

_TRANSIENT = (DecodeError, ReadFault)
_T = TypeVar("_T")
DISCOVERY_ATTEMPTS = 5
MAX_LOOPS = 4096  # event loops whose address one read shares among their tasks
BATCH = 256  # tasks decoded from one generation of cached pages
KNOWN_BATCH = 1024  # tasks ``_park_known`` takes at once (no page cache: bigger reads)
TASK_ATTEMPTS = 4  # reads of one busy task before it is reported partial
_DIGITS = re.compile(r"(\d+)")
_NOT_PARKED = ("finished", "running")   # chains whose task ``_task`` reads further
MAX_BACKOFF = 7   # after misses in a row, at most 2**(7-1)-1 batches read the long way
MAX_AWAITERS = 1 << 16   # awaiters whose kind one read remembers (``_park_known``)


MAX_WARNINGS = 1000  # per snapshot: a process of garbage tasks must not fill the reader


def _warn(warnings: list[str], text: str) -> None:
    """Add a warning, up to MAX_WARNINGS (then one line says that more were left out)."""
    if len(warnings) < MAX_WARNINGS:
        warnings.append(text)
    elif len(warnings) == MAX_WARNINGS:
        warnings.append("more warnings were left out")


def trim_heap() -> None:
    """malloc_trim(0): return the free pages of every glibc arena to the system."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def _natural(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in _DIGITS.split(name)]


def order_tasks(tasks: list[Task], thread_order: list[int], *, by_name: bool) -> list[Task]:
    """Threads in the interpreter's order (newest first, as 3.15's own tool lists them),
    tasks of no known thread last; within a thread, creation order where the interpreter
    keeps it (3.14+ lists), else by name ("Task-2" before "Task-10")."""
    if not by_name and len({task.thread_id for task in tasks}) <= 1:
        return list(tasks)   # one thread: the order read is the order
    rank = {tid: i for i, tid in enumerate(thread_order)}
    last = len(rank)

    def key(task: Task) -> tuple:
        where = rank.get(task.thread_id, last)
        return (where, _natural(task.name), task.id) if by_name else (where,)

    return sorted(tasks, key=key)


def settle_running(threads: list[Thread], tasks: list[Task], named: Mapping[int, int],
                   truncated: bool) -> None:
    """Make each thread's ``running_task`` a task of ``tasks`` (in the order they were
    read) that was seen running on it, or 0, and say why when that is not the task the
    thread named running when the read began (``named``: native id -> task).

    The thread is read first, each task later, each at its own moment: the task it named
    may have suspended or finished by then, and others may have been seen running since
    (several on one thread: an eager task's step inside its parent's, or steps seen at
    different moments).  Of those, the one the thread named wins, else the last read."""
    by_id = {t.id: t for t in tasks}
    for thread in threads:
        seen = [t.id for t in tasks if t.state == "running" and t.thread_id == thread.thread_id]
        said = named.get(thread.thread_id, 0)
        thread.running_task = said if said in seen else (seen[-1] if seen else 0)
        thread.running_note = None
        if not said or said == thread.running_task:
            continue
        if said in by_id:
            why = "had suspended by the time it was read"
        elif truncated:
            why = "is not among the tasks read (more tasks than aiobpf reads)"
        else:
            why = ("is not among the tasks read: it finished before they were read (or was "
                   "not in the task lists yet: an eager task's first step)")
        thread.running_note = f"task {said:#x} was running when the read began, and {why}"


class Collector:
    """Reads snapshots of one target process, reusing its discovery between reads.

    What one read works with (its options, the BPF records, what it found so far) lives
    in that read (``_Read``), never here: a collector holds the target, its memory and
    the caches of what cannot change while they are valid."""

    def __init__(self, target: Target, max_tasks: int = MAX_TASKS) -> None:
        self.target = target
        self.max_tasks = max_tasks
        self.mem = RemoteMemory(target.pid)
        self.objs = Objects(self.mem, target.layout)
        self.frames = Frames(self.objs)

    def close(self) -> None:
        self.mem.close()

    def forget(self, *, trim: bool = False) -> None:
        """Drop every cache (pages, decoded objects and frames): between reads a
        collector holds nothing that grows with the target.  ``trim`` also hands the
        heap freed by a big read back to the system (glibc keeps it otherwise)."""
        self.mem.clear()
        self.objs.clear()
        self.frames.clear()
        if trim:
            trim_heap()

    def snapshot(self, *, details: bool = True,
                 records: Mapping[int, TaskRecord] | None = None,
                 sink: Callable[[Task], None] | None = None, names: bool = True,
                 parked: Callable[[Parked], None] | None = None) -> Snapshot:
        """Read every pending task now.  ``details=False`` skips what only the JSON
        document shows (what each innermost frame awaits).

        ``records`` are the BPF capture's latest records (task address -> record): a
        task suspended where its record says is shown from it (source "bpf"), as it
        was when its last step ended; the others are read from memory.

        With ``sink``, each task is handed to it as soon as it is read and not kept
        (the snapshot's ``tasks`` stay empty): memory stays bounded by a batch, not by
        the target's task count.  Awaiters that finished during the read are then
        left in ``awaited_by`` (a task id the sink never saw).  ``names=False`` leaves
        task names empty (not decoded: less time, and no name cache).

        With ``parked`` too (3.14+), the tasks of a batch that are suspended where their
        await chains say and awaited by one awaiter or none (most tasks) are handed to
        it as one ``Parked`` instead, without a ``Task`` each: what a summary needs of
        them is their id, their first awaiting task and their frames."""
        if parked is not None and sink is None:
            raise ValueError("parked needs a sink for the other tasks")
        return _Read(self, details, records or {}, names, parked).run(sink)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (reference counting frees
    what the block drops as before); on again after it unless it was off already."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def retry(read: Callable[[], _T], attempts: int, fresh: Callable[[], None]) -> _T:
    """``read()``; when it tears (the target changed an object under it), ``fresh()``
    and again, ``attempts`` times in all; the last failure is raised."""
    for _ in range(attempts - 1):
        try:
            return read()
        except _TRANSIENT:
            fresh()
    return read()


class _Read:
    """One snapshot being taken: its options and what it found so far."""

    def __init__(self, collector: Collector, details: bool,
                 records: Mapping[int, TaskRecord], names: bool,
                 parked: Callable[[Parked], None] | None = None) -> None:
        self.target = collector.target
        self.max_tasks = collector.max_tasks
        self.mem, self.objs, self.frames = collector.mem, collector.objs, collector.frames
        self.linked = self.target.layout.has("task.node")
        self._span = task_span(self.objs)
        self._details = details
        self._names = names
        self._records = records
        self._parked = parked if self.linked else None
        if self._parked is not None:
            L = self.target.layout
            self._task_layout = TaskLayout(L["task.state"], L["task.coro"], L["task.awaited_by"],
                                           L["task.awaited_by_is_set"], self._span)
        self._stacks = Stacks()            # the stacks of the tasks handed to ``parked``
        self._firsts: dict[int, int] = {}  # awaiter -> itself if a task, else 0
        self._misses = 0                   # batches in a row that ``_park_known`` mostly left
        self._known_from = 0               # the next batch ``_park_known`` is tried on
        self._named: dict[int, int] = {}   # native thread id -> the task it named running
        self._loops: dict[int, int] = {}   # each event loop's address, as one int object
        self.torn = 0  # reads that tore and were taken again
        self.truncated = False  # tasks were left out (more than max_tasks)

    def _torn_read(self) -> None:
        self.torn += 1
        self.mem.clear()

    # -- discovery of tasks -------------------------------------------------------
    def _task_addresses(self, interps: list[int], threads: list[ThreadState], warnings: list[str],
                        partial: bool) -> tuple[TaskRefs, dict[int, int]]:
        """The tasks (with their threads' native ids on 3.14+), and loop -> running task
        (3.11-3.13).  ``partial``: keep what a task list that tore gave (``linked_tasks``)."""
        if self.linked:
            linked = linked_tasks(self.objs, threads, interps, warnings, self.max_tasks,
                                  partial=partial)
            self.truncated = len(linked.addrs) >= self.max_tasks
            return linked, {}
        found_tasks: list[int] = []
        running: dict[int, int] = {}
        seen_asyncio = False
        for interp in interps:
            found = registered_tasks(self.objs, interp)
            if found is None:
                continue
            seen_asyncio = True
            room = self.max_tasks - len(found_tasks)
            if len(found[0]) > room:
                self.truncated = True
                warnings.append(f"more tasks than the {self.max_tasks:,} aiobpf reads: "
                                "the rest are left out")
            found_tasks.extend(found[0][:room])
            running.update(found[1])
        if not seen_asyncio:
            raise NoAsyncio(f"process {self.target.pid} (Python {self.target.version_str}) "
                            "has not imported asyncio")
        return TaskRefs(found_tasks, [0] * len(found_tasks)), running

    def _read_raw(self, addr: int) -> RawTask:
        """The task at ``addr``, its name decoded unless names are left out."""
        name = None if self._names else ""
        return retry(lambda: read_task(self.objs, addr, self._span, name=name), 2,
                     self.mem.clear)

    def _read_batch(self, refs: TaskRefs, warnings: list[str]) -> list[RawTask]:
        """The pending tasks of ``refs``, their objects read with one system call, the
        heads of their names with another."""
        pending = self.target.layout["enum.STATE_PENDING"]
        span, objs = self._span, self.objs
        blobs, offsets = self.mem.read_packed(refs.addrs, span)
        raws, unnamed = [], []
        for addr, tid, at in zip(refs.addrs, refs.tids, offsets, strict=True):
            try:
                if at < 0:
                    raise ReadFault(addr, span)
                raw = decode_task(objs, addr, blobs, "", at)
                named = not self._names
            except _TRANSIENT:
                try:
                    raw, named = self._read_raw(addr), True
                except _TRANSIENT as exc:
                    _warn(warnings, f"task {addr:#x} could not be read: {exc}")
                    continue
            if raw.state == pending:
                raw.thread_native_id = tid
                raws.append(raw)
                if not named:
                    unnamed.append(raw)
        lost = set()
        for raw in name_tasks(self.objs, unnamed) if unnamed else ():
            try:
                raw.name = self._name_again(raw)
            except _TRANSIENT as exc:
                _warn(warnings, f"task {raw.addr:#x} could not be read: {exc}")
                lost.add(raw.addr)
        return [raw for raw in raws if raw.addr not in lost] if lost else raws

    def _name_again(self, raw: RawTask) -> str:
        return retry(lambda: task_name(self.objs, raw.name_obj), 2, self.mem.clear)

    # -- the snapshot -------------------------------------------------------------
    def _discover(self, warnings: list[str]
                  ) -> tuple[list[int], list[ThreadState], TaskRefs, dict[int, int]]:
        """Interpreters, thread states, tasks and loop -> running task (3.11-3.13).
        Thread states and task lists change as the target runs: a read that tore is
        taken again from fresh pages, and the last attempt keeps the part of a torn task
        list that it could walk (with a warning)."""
        def attempt(partial: bool) -> tuple[list[int], list[ThreadState], TaskRefs,
                                            dict[int, int]]:
            interps = interpreters(self.objs, self.target.runtime_addr)
            threads = [ts for interp in interps for ts in thread_states(self.objs, interp)]
            refs, running_by_loop = self._task_addresses(interps, threads, warnings, partial)
            return interps, threads, refs, running_by_loop

        try:
            return retry(lambda: attempt(False), DISCOVERY_ATTEMPTS - 1, self._discovery_torn)
        except _TRANSIENT:
            self._discovery_torn()
            return attempt(True)

    def _discovery_torn(self) -> None:
        self.torn += 1
        self._forget_decoded()

    def _forget_decoded(self) -> None:
        self.mem.clear()
        self.objs.clear()
        self.frames.clear()

    def run(self, sink: Callable[[Task], None] | None) -> Snapshot:
        """The snapshot (``Collector.snapshot``), read with the cyclic garbage collector
        paused: a read makes millions of objects and no reference cycles, and the
        collector's passes over them cost a fifth of a big read."""
        with gc_paused():
            return self._run(sink)

    def _run(self, sink: Callable[[Task], None] | None) -> Snapshot:
        started, t0 = time.time(), time.perf_counter()
        warnings: list[str] = list(self.target.layout.notes)
        self._forget_decoded()
        interps, threads, refs, running_by_loop = self._discover(warnings)

        found: list[Task] = []
        keep = found.append if sink is None else sink
        if self.linked:
            count = self._read_linked(refs, threads, warnings, keep)
            if not count and "asyncio" not in modules(self.objs, interps[0]):
                raise NoAsyncio(f"process {self.target.pid} (Python {self.target.version_str}) "
                                "has not imported asyncio")
        else:
            self._read_registered(refs, threads, running_by_loop, warnings, keep)
        del refs
        # An awaiter that finished while the snapshot was taken awaits nothing any more.
        ids = {t.id for t in found}
        gone = {a.id for t in found for a in t.awaited_by if a.is_task} - ids
        for task in found if gone else ():
            if any(a.is_task and a.id in gone for a in task.awaited_by):
                task.awaited_by = [a for a in task.awaited_by if not a.is_task or a.id not in gone]
        shown = [Thread(ts.native_id, ts.thread_id, self._interp_id(ts.interp),
                        ts.running_loop, ts.running_task) for ts in threads]
        if sink is None:
            settle_running(shown, found, self._named, self.truncated)
        tasks = order_tasks(found, [ts.native_id for ts in threads], by_name=not self.linked)
        return Snapshot(
            pid=self.target.pid,
            python_version=self.target.version_str,
            python_build=self._build_label(),
            executable=self.target.info.exe,
            threads=shown,
            tasks=tasks,
            taken_at=started,
            duration_s=time.perf_counter() - t0,
            layout_sources=self.target.layout.source_counts(),
            warnings=warnings,
            capture="bpf+memory" if self._records else "memory",
            torn=self.torn,
            truncated=self.truncated,
        )

    # The target runs on while it is read, so a page cached for long describes the
    # past.  Tasks are read in batches; each batch starts from fresh pages, and reads
    # each level of its objects (the tasks, their names, their coroutines, what those
    # await) with one system call, which bounds how far apart in time the parts of one
    # task's record can be.

    def _read_linked(self, refs: TaskRefs, threads: list[ThreadState],
                     warnings: list[str], keep: Callable[[Task], None]) -> int:
        """3.14+: every task record in one pass; awaiters are recorded in each task.
        Returns how many tasks were kept."""
        running = {ts.running_task: ts for ts in threads if ts.running_task}
        self._named = {ts.native_id: task for task, ts in running.items()}
        index = AwaiterIndex(self.objs, [])
        count = 0
        # With ``parked``, the known path takes KNOWN_BATCH tasks at a time (after a
        # first batch of BATCH, which teaches it), and leaves the rest to the long way.
        step = KNOWN_BATCH if self._parked is not None else BATCH
        bounds = [0, *range(BATCH, len(refs.addrs), step), len(refs.addrs)] if refs.addrs else []
        for number, (start, stop) in enumerate(itertools.pairwise(bounds)):
            batch = refs.part(start, stop)
            if self._parked is not None and number >= self._known_from:
                self.mem.clear()
                size = len(batch.addrs)
                batch, parked = self._park_known(batch, index)
                count += parked
                # A batch mostly left (its reads spent twice; the first teaches what
                # the next ones need): after the second in a row, the next one goes the
                # long way at once, after the third the next three, and so on.
                self._misses = self._misses + 1 if 2 * len(batch.addrs) > size else 0
                skip = (1 << min(self._misses, MAX_BACKOFF) - 1) - 1 if self._misses else 0
                self._known_from = number + 1 + skip
            for at in range(0, len(batch.addrs), BATCH):
                self.mem.clear()
                raws = self._read_batch(batch.part(at, at + BATCH), warnings)
                self._assign_threads(raws, threads)  # tasks of threads that have exited
                count += self._build(raws, index, running, keep)
        return count

    def _park_known(self, refs: TaskRefs, index: AwaiterIndex) -> tuple[TaskRefs, int]:
        """Hand ``parked`` the tasks of ``refs`` that what is known already decodes:
        pending, awaited by one awaiter or none, suspended in generators met before
        (``Frames.stacks``).  Returns the tasks left (read again the long way) and how
        many were handed."""
        assert self._parked is not None
        addrs = refs.addrs
        blobs, offsets = self.mem.read_packed(addrs, self._span)
        simple, coros, awaited, others = task_heads(blobs, offsets, self._task_layout,
                                                    self.target.layout["enum.STATE_PENDING"])
        if self._records:   # a task its BPF record shows is read the long way
            keep = [k for k, i in enumerate(simple) if addrs[i] not in self._records]
            others += [i for i in simple if addrs[i] in self._records]
            simple, coros, awaited = ([seq[k] for k in keep] for seq in (simple, coros, awaited))
        nodes, left = self.frames.stacks(coros, self._stacks)
        firsts = self._first_tasks(awaited, index)
        lost = set(left)
        if not firsts.keys() >= set(awaited):
            lost.update(k for k, a in enumerate(awaited) if a not in firsts)
        rest = refs.pick(others + [simple[k] for k in sorted(lost)])
        if lost:
            kept = [k for k in range(len(simple)) if k not in lost]
            simple, awaited = [simple[k] for k in kept], [awaited[k] for k in kept]
            handed = [nodes[k] for k in kept]
        else:
            handed = nodes.tolist()
        if handed:
            self._parked(Parked(list(map(addrs.__getitem__, simple)),
                                list(map(firsts.__getitem__, awaited)), handed, self._stacks))
        return rest, len(handed)

    def _first_tasks(self, awaiters: list[int], index: AwaiterIndex) -> dict[int, int]:
        """Awaiter (0: none) -> itself when it is a task, else 0 (a future), for each of
        ``awaiters`` that could be read (the others' tasks go the long way, which reads
        them again from fresh pages); remembered for the read, up to MAX_AWAITERS."""
        firsts = self._firsts
        if len(firsts) > MAX_AWAITERS:
            firsts.clear()
        firsts[0] = 0
        for addr in set(awaiters).difference(firsts):
            try:
                firsts[addr] = addr if index.recorded_awaiter(addr).is_task else 0
            except _TRANSIENT:
                continue
        return firsts

    def _read_registered(self, refs: TaskRefs, threads: list[ThreadState],
                         running_by_loop: dict[int, int], warnings: list[str],
                         keep: Callable[[Task], None]) -> None:
        """3.11-3.13: every task first (awaiters are inferred from all of them), then
        each batch again from fresh pages."""
        pending = self.target.layout["enum.STATE_PENDING"]
        raws: list[RawTask] = []
        for start in range(0, len(refs.addrs), BATCH):
            raws += self._read_batch(refs.part(start, start + BATCH), warnings)
        self._assign_threads(raws, threads)
        running = self._running_threads(threads, running_by_loop, raws)
        self._named = {ts.native_id: task for task, ts in running.items()}
        index = AwaiterIndex(self.objs, raws)
        for start in range(0, len(raws), BATCH):
            batch = raws[start:start + BATCH]
            self.mem.clear()
            span = self._span
            blobs, offsets = self.mem.read_packed([raw.addr for raw in batch], span)
            fresh_batch = []
            for raw, at in zip(batch, offsets, strict=True):
                try:
                    fresh = (raw if at < 0
                             else decode_task(self.objs, raw.addr, blobs, raw.name, at))
                except _TRANSIENT:
                    fresh = raw
                if fresh.state != pending or fresh.type != raw.type:
                    continue  # finished (and maybe freed) since the task list was read
                fresh.thread_native_id = raw.thread_native_id
                fresh_batch.append(fresh)
            self._build(fresh_batch, index, running, keep)

    def _build(self, raws: list[RawTask], index: AwaiterIndex, running: dict[int, ThreadState],
               keep: Callable[[Task], None]) -> int:
        """Hand ``keep`` the task of each of ``raws`` (a batch): the await chains of the
        tasks that no BPF record shows are followed side by side.  Returns how many."""
        needed = ([raw for raw in raws if self._record(raw, running) is None] if self._records
                  else raws)
        chains = dict(zip((raw.addr for raw in needed),
                          self.frames.chains([raw.coro for raw in needed]), strict=True))
        count = 0
        if self._parked is not None:
            raws, count = self._park(raws, chains, index)
        for raw in raws:
            task = self._task(raw, index, running, chains.get(raw.addr))
            if task is not None:
                keep(task)
                count += 1
        return count

    def _park(self, raws: list[RawTask], chains: dict[int, Chain | None],
              index: AwaiterIndex) -> tuple[list[RawTask], int]:
        """Hand ``parked`` the tasks of ``raws`` whose chain was read, neither finished
        nor running, and that one awaiter or none awaits: as ``_task`` would make them,
        less what a summary does not read.  Returns the others and how many were handed."""
        assert self._parked is not None
        ids: list[int] = []
        firsts: list[int] = []
        nodes: list[int] = []
        rest: list[RawTask] = []
        known = self._first_tasks([raw.awaited_by[0] for raw in raws if raw.awaited_by], index)
        for raw in raws:
            chain = chains.get(raw.addr)
            first = known.get(raw.awaited_by[0] if raw.awaited_by else 0)
            node = None
            if (first is not None and chain is not None and len(raw.awaited_by) <= 1
                    and chain.innermost_state not in _NOT_PARKED):
                node = self._stacks.node_of(chain.frames)
            if first is None or node is None:
                rest.append(raw)
                continue
            ids.append(raw.addr)
            firsts.append(first)
            nodes.append(node)
        if ids:
            self._parked(Parked(ids, firsts, nodes, self._stacks))
        return rest, len(ids)

    def _interp_id(self, interp: int) -> int:
        try:
            return self.mem.i64(interp + self.target.layout["interp.id"])
        except _TRANSIENT:
            return -1

    def _assign_threads(self, raws: list[RawTask], threads: list[ThreadState]) -> None:
        """Give tasks not found in a per-thread list the thread that runs their loop."""
        native_by_ident = {ts.thread_id: ts.native_id for ts in threads}
        by_loop: dict[int, int] = {}
        for raw in raws:
            if raw.thread_native_id or not raw.loop:
                continue
            if raw.loop not in by_loop:
                try:
                    ident = loop_thread_id(self.objs, raw.loop)
                except _TRANSIENT:
                    ident = None
                by_loop[raw.loop] = native_by_ident.get(ident, 0) if ident else 0
            raw.thread_native_id = by_loop[raw.loop]

    def _running_threads(self, threads: list[ThreadState], running_by_loop: dict[int, int],
                         raws: list[RawTask]) -> dict[int, ThreadState]:
        """Running task -> the thread state it runs on."""
        out = {ts.running_task: ts for ts in threads if ts.running_task}
        if running_by_loop:
            by_native = {ts.native_id: ts for ts in threads}
            loop_thread: dict[int, int] = {}
            for raw in raws:
                if raw.thread_native_id:
                    loop_thread.setdefault(raw.loop, raw.thread_native_id)
                if running_by_loop.get(raw.loop) == raw.addr and raw.thread_native_id in by_native:
                    out[raw.addr] = by_native[raw.thread_native_id]
            # A running task not in the lists (an eager task's first step, 3.12-3.13)
            # still tells which task of its thread runs above the others.
            for loop, task in running_by_loop.items():
                if task not in out and loop_thread.get(loop) in by_native:
                    out[task] = by_native[loop_thread[loop]]
        return out

    def _chain(self, raw: RawTask) -> Chain:
        """The task's await chain; a chain that tore (an object freed between the read
        of its awaiter and its own read) is read again from fresh pages, and one that
        cannot be read is an empty chain that says why."""
        try:
            return retry(lambda: self.frames.chain(raw.coro), TASK_ATTEMPTS, self._torn_read)
        except _TRANSIENT as exc:
            self.torn += 1
            unread = Chain()
            unread.errors.append(f"coroutine stack unreadable: {exc}")
            return unread

    def _still_pending(self, raw: RawTask) -> RawTask | None:
        """The task read again from fresh pages; None when it has finished meanwhile."""
        self.mem.clear()
        try:
            fresh = read_task(self.objs, raw.addr, self._span, name=raw.name)
        except _TRANSIENT:
            return None
        pending = self.target.layout["enum.STATE_PENDING"]
        if fresh.state != pending or not fresh.coro:
            return None
        fresh.thread_native_id = raw.thread_native_id
        return fresh

    def _record(self, raw: RawTask, running: dict[int, ThreadState]) -> TaskRecord | None:
        """The task's BPF record, when it shows the task as it is now: suspended
        where its last step left it, on the same coroutine, not running."""
        record = self._records.get(raw.addr)
        if (record is not None and record.state == CAPTURE_SUSPENDED and record.coro == raw.coro
                and raw.addr not in running):
            return record
        return None

    def _task(self, raw: RawTask, index: AwaiterIndex, running: dict[int, ThreadState],
              chain: Chain | None = None) -> Task | None:
        """The task's record; None when it turns out to have finished during the read.
        ``chain``: its await chain, read already (None: read it now)."""
        loop = self._loops.get(raw.loop)   # one int object per loop, not per task
        if loop is None:
            loop = raw.loop
            if len(self._loops) < MAX_LOOPS:
                self._loops[loop] = loop
        record = self._record(raw, running) if self._records else None
        if record is not None:
            return self._from_record(Task(raw.addr, raw.name, raw.thread_native_id, "pending",
                                          [], loop=loop, coro=raw.coro), raw, record, index)
        if chain is None and raw.coro:
            chain = self._chain(raw)
        if chain is None or chain.innermost_state == "finished":
            # Its coroutine is done (or none): the task finished after its state was read.
            fresh = self._still_pending(raw)
            if fresh is None:
                return None
            raw = fresh
            chain = self._chain(raw)
        # The task takes its chain's frames (the chain is not used again).
        task = Task(raw.addr, raw.name, raw.thread_native_id, "pending", chain.frames,
                    errors=tuple(chain.errors) if chain.errors else (), loop=loop,
                    coro=raw.coro)
        if chain.awaited and self._details:
            task.awaits = self._describe(chain.awaited)
        if chain.innermost_state == "running":
            task.state = "running"
            self._running_stack(task, raw, running)
        awaiters = index.recorded if self.linked else index.inferred
        try:
            task.awaited_by = awaiters(raw)
        except _TRANSIENT:   # read again from fresh pages
            self.mem.clear()
            try:
                task.awaited_by = retry(lambda: awaiters(raw), TASK_ATTEMPTS - 1, self.mem.clear)
            except _TRANSIENT as exc:
                task.errors += (f"awaiters unreadable: {exc}",)
        return task

    def _from_record(self, task: Task, raw: RawTask, record: TaskRecord,
                     index: AwaiterIndex) -> Task:
        """The task as its BPF record shows it: suspended where its last step left it,
        read in kernel space while its thread held the GIL (code objects, which never
        change, are decoded from memory)."""
        task.source = "bpf"
        try:
            task.frames = list(frames_of(record, self.frames))
            if record.truncated:
                task.errors += (f"more than {len(record.frames)} frames deep",)
            if record.awaited and self._details:
                task.awaits = self._describe(record.awaited)
            if self.linked:
                raw.awaited_by = ([] if not record.awaited_by else
                                  self.objs.set_items(record.awaited_by)
                                  if record.awaited_by_is_set else [record.awaited_by])
            task.awaited_by = index.recorded(raw) if self.linked else index.inferred(raw)
        except _TRANSIENT as exc:
            task.errors += (f"record not decoded: {exc}",)
        return task

    def _running_stack(self, task: Task, raw: RawTask,
                       running: dict[int, ThreadState]) -> None:
        """A running task's frames are on its thread's stack, down to its coroutine.

        A task whose step started an eager task (3.12+) is running too, but its thread
        names the eager task as the one running: the outer task's frames are those of
        its loop's thread below the eager task's coroutine."""
        ts = running.get(raw.addr)
        inner = 0
        if ts is None:
            inner, ts = next(((t, s) for t, s in running.items()
                              if s.native_id == raw.thread_native_id), (0, None))
        if ts is None or not ts.current_frame:
            task.errors += ("running, but its thread's stack was not found",)
            return
        base = self.frames.iframe_of(raw.coro)
        try:
            stack = self.frames.thread_stack(ts.current_frame, stop_at=base)
            inner_base = self._coroutine_frame(inner) if inner else 0
        except _TRANSIENT as exc:
            task.errors += (f"thread stack unreadable: {exc}",)
            return
        if stack and stack[-1][0] == base:
            frames = [addr for addr, _ in stack]
            if inner_base in frames:   # the eager task's frames are its own, not ours
                stack = stack[frames.index(inner_base) + 1:]
            task.frames = [frame for _, frame in reversed(stack)]
        else:
            task.errors += ("running, but its coroutine is not on its thread's stack",)

    def _coroutine_frame(self, task_addr: int) -> int:
        """The interpreter frame of a task's coroutine (0: it has none)."""
        coro = self.mem.ptr(task_addr + self.target.layout["task.coro"])
        return self.frames.iframe_of(coro) if coro else 0

    def _describe(self, obj: int) -> str:
        """A short label for what the innermost frame awaits (a future, an awaitable)."""
        try:
            name = self.objs.type_name(obj)
            if name == "_asyncio.FutureIter":   # a heap type from 3.12
                fut = self.mem.ptr(obj + self.target.layout["futureiter.future"])
                return f"{self.objs.type_name(fut)} {fut:#x}"
            return f"{name} {obj:#x}"
        except _TRANSIENT:
            return f"{obj:#x}"

    def _build_label(self) -> str:
        image = self.target.core.image
        kind = "debug" if self.target.debug_build else "release"
        if image.has_debug_info:
            return f"{kind}, with DWARF"
        if ".symtab" in image.sections:
            return f"{kind}, with symbols"
        return f"{kind}, stripped"

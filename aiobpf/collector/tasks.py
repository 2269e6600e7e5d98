"""Find every asyncio task of a target and read each task object.

3.14+: the C module links every task into a list per thread state (and one per
interpreter for tasks whose thread has gone); aiobpf walks all of them.
3.11-3.13: the C module keeps tasks in sets it shares with ``asyncio.tasks``
(``_all_tasks`` on 3.11; ``_scheduled_tasks``, ``_eager_tasks`` on 3.12+) and
the running ones in ``_current_tasks``; they are reached through Python
objects alone: ``_PyRuntime`` -> interpreter -> ``sys.modules``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import NamedTuple, cast

from aiobpf.collector.interpreter import ThreadState, module_globals, modules
from aiobpf.collector.memory import ReadFault
from aiobpf.collector.objects import DecodeError, Objects, field_reader, u64
from aiobpf.collector.speedups import WALK_LIMIT, WALK_LOOPS, walk_links

# Tasks read from one process.  Loops are caught by cycle detection; this bounds what a
# forged list (millions of distinct nodes) costs the reader in memory and time.
MAX_TASKS = 1 << 22
# Characters of a task name kept: a name is read for each of up to MAX_TASKS tasks, and a
# forged one may claim 64k characters.
MAX_TASK_NAME = 1024


class TaskListCorrupt(Exception):
    """A task list that loops without returning to its head."""


@dataclass(slots=True)
class RawTask:
    """A task object as read from memory, before reconstruction."""

    addr: int
    type: int
    name: str
    state: int
    coro: int
    fut_waiter: int
    loop: int
    thread_native_id: int = 0
    awaited_by: list[int] = field(default_factory=list)   # 3.14+: task_awaited_by
    name_obj: int = 0       # the object ``name`` was decoded from


class TaskRefs(NamedTuple):
    """Tasks found: their addresses and, side by side, the native id of the thread whose
    task list held each (0: none known)."""

    addrs: list[int]
    tids: list[int]

    def part(self, start: int, stop: int) -> TaskRefs:
        return TaskRefs(self.addrs[start:stop], self.tids[start:stop])

    def pick(self, indices: list[int]) -> TaskRefs:
        return TaskRefs([self.addrs[i] for i in indices], [self.tids[i] for i in indices])


def walk_llist(objs: Objects, head: int, limit: int = MAX_TASKS) -> Iterator[int]:
    """Nodes of a circular ``llist_node`` list, with Brent's cycle detection; at most
    ``limit`` of them.  A list that loops or is too long raises TaskListCorrupt, one
    that leads to memory that cannot be read ReadFault, after the nodes before."""
    nodes, error = llist_nodes(objs, head, limit)
    yield from nodes
    if error is not None:
        raise error


def llist_nodes(objs: Objects, head: int, limit: int, minus: int = 0
                ) -> tuple[list[int], TaskListCorrupt | DecodeError | ReadFault | None]:
    """``walk_llist``'s nodes (each less ``minus``: the objects that hold them), and what
    it raises after them (None: the list ended)."""
    nodes, status, error = walk_links(objs.mem.page, head, objs.layout["llist.next"], limit,
                                      (DecodeError, ReadFault), minus)
    if status == WALK_LOOPS:
        return nodes, TaskListCorrupt(f"task list at {head:#x} loops")
    if status == WALK_LIMIT:
        return nodes, TaskListCorrupt(f"more tasks than the {limit:,} aiobpf reads (task "
                                      f"list at {head:#x}): the rest are left out")
    return nodes, cast(DecodeError | ReadFault | None, error)   # one of the faults given


def linked_tasks(objs: Objects, threads: list[ThreadState], interps: list[int],
                 errors: list[str], limit: int = MAX_TASKS, *, partial: bool = False
                 ) -> TaskRefs:
    """The tasks of the per-thread and per-interpreter lists, at most ``limit``.

    A list that changes while it is walked can lead to memory that no longer holds a
    node: the read faults, and the walk is taken again by the caller.  With
    ``partial`` (the last attempt), the nodes walked before the fault are kept and
    ``errors`` says that the rest of that list was left out."""
    L = objs.layout.values
    node_off = L["task.node"]
    out = TaskRefs([], [])
    heads = [(ts.addr + L["tstate.asyncio_tasks_head"], ts.native_id) for ts in threads]
    heads += [(interp + L["interp.asyncio_tasks_head"], 0) for interp in interps]
    for head, tid in heads:
        if len(out.addrs) >= limit:
            break
        nodes, exc = llist_nodes(objs, head, limit - len(out.addrs), node_off)
        if isinstance(exc, (DecodeError, ReadFault)):
            if not partial:
                raise exc
            if nodes:
                nodes.pop()   # the node whose link could not be read is none
            errors.append(f"the task list at {head:#x} changed while it was read ({exc}): "
                          f"the tasks after the first {len(nodes):,} are left out")
        elif exc is not None:
            errors.append(str(exc))
        out.addrs.extend(nodes)
        out.tids.extend(repeat(tid, len(nodes)))
    return out


def asyncio_globals(objs: Objects, interp: int) -> dict[str, int] | None:
    """Globals of ``asyncio.tasks`` (None when asyncio was never imported)."""
    mods = modules(objs, interp)
    module = mods.get("asyncio.tasks")
    return module_globals(objs, module) if module else None


def registered_tasks(objs: Objects, interp: int) -> tuple[list[int], dict[int, int]] | None:
    """Tasks from the module-level registries (3.11-3.13), and loop -> running task."""
    g = asyncio_globals(objs, interp)
    if g is None:
        return None
    found: list[int] = []
    for name in ("_all_tasks", "_scheduled_tasks"):
        weakset = g.get(name)
        if weakset:
            data = objs.attr(weakset, "data")
            if data:
                for ref in objs.set_items(data):
                    try:
                        target = objs.weakref_target(ref)
                    except (DecodeError, ReadFault):
                        continue  # a reference dropped while the set was read
                    if target:
                        found.append(target)
    eager = g.get("_eager_tasks")
    if eager:
        found.extend(objs.set_items(eager))
    running: dict[int, int] = {}
    current = g.get("_current_tasks")
    if current:
        # Rewritten at every task step: a torn read here only loses "running" marks.
        try:
            for loop, task in objs.dict_items(current):
                running[loop] = task
                found.append(task)
        except (DecodeError, ReadFault):
            pass
    return list(dict.fromkeys(found)), running


def task_name(objs: Objects, name_obj: int, head: bytes | bytearray | None = None) -> str:
    """Task.get_name(): a str, or the lazy "Task-N" counter kept as an int (3.12+).
    ``head``: the name object's first bytes, read already (``Objects.str_peek``)."""
    if not name_obj:
        return ""
    tp = u64(head, objs.o_type) if head is not None else objs.type_of(name_obj)
    kind = objs.type_kind(tp)
    if kind == "str" or objs.type_info(tp).flags & objs.consts.tpflags_unicode_subclass:
        return objs.str_(name_obj, MAX_TASK_NAME, head)
    if kind == "int":
        return f"Task-{objs.int_(name_obj)}"
    return f"<{objs.type_info(tp).name}>"


def read_task(objs: Objects, addr: int, span: int, name: str | None = None) -> RawTask:
    """A task object's fields; ``name`` skips decoding the name when it is known."""
    return decode_task(objs, addr, objs.mem.read(addr, span), name)


_TASK_FIELDS = (("object.type", "Q"), ("task.name", "Q"), ("task.state", "i"), ("task.coro", "Q"),
                ("task.fut_waiter", "Q"), ("task.loop", "Q"), ("task.awaited_by", "Q"),
                ("task.awaited_by_is_set", "B"))


def decode_task(objs: Objects, addr: int, blob: bytes | bytearray, name: str | None = None,
                at: int = 0) -> RawTask:
    """The fields of the task object whose first ``task_span`` bytes are ``blob[at:]``."""
    fields = objs.readers.get("task")
    if fields is None:
        L = objs.layout.values
        fields = objs.readers["task"] = field_reader([(L[n], c) for n, c in _TASK_FIELDS
                                                      if n in L])
    tp, name_obj, state, coro, fut_waiter, loop, *awaited = fields(blob, at)
    awaited_by: list[int] = []   # 3.14+: the awaiting task or future, or a set of them
    if awaited and awaited[0]:
        awaited_by = objs.set_items(awaited[0]) if awaited[1] else [awaited[0]]
    return RawTask(addr, tp, task_name(objs, name_obj) if name is None else name, state, coro,
                   fut_waiter, loop, 0, awaited_by, name_obj)


def name_tasks(objs: Objects, raws: list[RawTask]) -> list[RawTask]:
    """Decode the names of tasks read without them (``name=""``), the heads of all
    their name objects read at once.  Returns the tasks whose name could not be read."""
    peek = objs.str_peek
    heads, offsets = objs.mem.read_packed([raw.name_obj for raw in raws], peek)
    failed = []
    for raw, name, at in zip(raws, objs.short_names(heads, offsets), offsets, strict=True):
        if name is not None:
            raw.name = name
            continue
        try:
            raw.name = task_name(objs, raw.name_obj, heads[at:at + peek] if at >= 0 else None)
        except (DecodeError, ReadFault):
            failed.append(raw)
    return failed


def task_span(objs: Objects) -> int:
    """Bytes of a task object that ``decode_task`` decodes."""
    L = objs.layout.values
    return max(L[n] for n, _ in _TASK_FIELDS if n in L) + 8


def loop_thread_id(objs: Objects, loop: int) -> int | None:
    """threading.get_ident() of the thread running ``loop`` (its ``_thread_id``)."""
    try:
        value = objs.attr(loop, "_thread_id")
    except DecodeError:
        return None
    if not value or objs.kind(value) != "int":
        return None
    return objs.int_(value)

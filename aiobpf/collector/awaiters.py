"""Who awaits each task.

3.14+ records it: ``task_awaited_by`` holds the awaiting task or future (or a
set of them), filled by ``Task.__step``, ``gather``, ``shield``, ``wait``,
``as_completed``, ``TaskGroup`` and friends.

3.11-3.13 do not, so aiobpf infers the same edges from what exists:

- a task whose ``fut_waiter`` is the child awaits it directly;
- the child's done-callbacks lead to the waiters: a ``TaskGroup._on_task_done``
  bound method names its ``_parent_task``; a function's closure (``gather``'s
  ``_done_callback``, ``shield``'s ``_inner_done_callback``, ``wait``'s
  ``_on_completion``) or a ``functools.partial`` (``wait_for``'s
  ``_release_waiter``) holds the future that a task awaits; an ``as_completed``
  iterator's queue holds the getter futures that tasks await;
- a future reached that way that no task awaits is followed through its own
  callbacks (a gather nested in a gather), a few levels deep.

A gather future that no task awaits is reported as a non-task awaiter rather
than dropping the edge.  A done future (a gather that failed, a shield or
``wait_for`` whose outer future was cancelled, a ``wait`` that returned) awaits
nothing, as 3.14 records it: its remaining children are roots.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiobpf.collector.memory import ReadFault
from aiobpf.collector.model import Awaiter
from aiobpf.collector.objects import DecodeError, Objects
from aiobpf.collector.tasks import RawTask

MAX_FUTURE_HOPS = 8
MAX_CALLBACKS = 4096
_FUTURE = "_asyncio.Future"


class AwaiterIndex:
    def __init__(self, objs: Objects, tasks: list[RawTask]) -> None:
        self.objs = objs
        self.tasks = {t.addr: t for t in tasks}
        self.waiting_on: dict[int, list[int]] = {}
        self._recorded: dict[int, Awaiter] = {}   # shared: the exporters only read them
        self._alone: dict[int, list[Awaiter]] = {}   # awaiter -> [it], shared likewise
        for t in tasks:
            if t.fut_waiter:
                self.waiting_on.setdefault(t.fut_waiter, []).append(t.addr)

    # -- 3.14+ ------------------------------------------------------------------
    def recorded(self, task: RawTask) -> list[Awaiter]:
        """Awaiters a 3.14+ task records; ``task_is_task`` (shared with futures) tells
        tasks from other futures.  Tasks awaited by one awaiter alone (a TaskGroup's
        children: most tasks) share one list of it, as they share the Awaiter: the
        snapshot's readers never change them."""
        addrs = task.awaited_by
        if len(addrs) == 1:
            alone = self._alone.get(addrs[0])
            if alone is None:
                if len(self._alone) >= MAX_CALLBACKS:
                    self._alone.clear()
                alone = self._alone[addrs[0]] = [self.recorded_awaiter(addrs[0])]
            return alone
        return [self.recorded_awaiter(addr) for addr in addrs]

    def recorded_awaiter(self, addr: int) -> Awaiter:
        # Many tasks share an awaiter (a TaskGroup's parent): each is read once.
        awaiter = self._recorded.get(addr)
        if awaiter is None:
            if len(self._recorded) >= MAX_CALLBACKS:
                self._recorded.clear()
            awaiter = self._recorded[addr] = self._awaiter(addr)
        return awaiter

    def _awaiter(self, addr: int) -> Awaiter:
        """The awaiter at ``addr``: ``task_is_task`` (shared with futures) tells tasks
        from other futures."""
        if self.objs.mem.read(addr + self.objs.layout["task.is_task"], 1)[0]:
            return Awaiter(addr)
        return Awaiter(addr, is_task=False, type_name=self._type_name(addr))

    # -- 3.11-3.13 ----------------------------------------------------------------
    def inferred(self, task: RawTask) -> list[Awaiter]:
        found: dict[int, Awaiter] = {}
        for waiter in self.waiting_on.get(task.addr, ()):
            found.setdefault(waiter, Awaiter(waiter))
        for awaiter in self._from_callbacks(task.addr, 0, {task.addr}):
            if awaiter.id != task.addr:
                found.setdefault(awaiter.id, awaiter)
        return list(found.values())

    def _type_name(self, addr: int) -> str:
        try:
            return self.objs.type_name(addr)
        except (DecodeError, ReadFault):
            return "?"

    def _callbacks(self, fut: int) -> list[int]:
        L = self.objs.layout.values
        mem = self.objs.mem
        out = []
        first = mem.ptr(fut + L["future.callback0"])
        if first:
            out.append(first)
        lst = mem.ptr(fut + L["future.callbacks"])
        if lst:
            for item in self.objs.list_items(lst)[:MAX_CALLBACKS]:
                if self.objs.kind(item) == "tuple":
                    items = self.objs.tuple_items(item)
                    if items:
                        out.append(items[0])
                else:
                    out.append(item)
        return out

    def _done(self, fut: int) -> bool:
        """Whether the future ``fut`` is done (finished, failed or cancelled), as 3.14+
        sees it: then it awaits nothing, and nothing awaits through it."""
        L = self.objs.layout.values
        state = int.from_bytes(self.objs.mem.read(fut + L["future.state"], 4), "little",
                               signed=True)
        return state != L["enum.STATE_PENDING"]

    def _is_future(self, obj: int) -> bool:
        return self.objs.is_subtype(self.objs.type_of(obj), _FUTURE)

    def _from_callbacks(self, fut: int, depth: int, seen: set[int]) -> Iterable[Awaiter]:
        """Awaiters found through the done-callbacks of ``fut``."""
        if depth > MAX_FUTURE_HOPS:
            return
        for cb in self._callbacks(fut):
            try:
                yield from self._from_callback(cb, depth, seen)
            except (DecodeError, ReadFault):
                continue

    def _from_callback(self, cb: int, depth: int, seen: set[int]) -> Iterable[Awaiter]:
        objs = self.objs
        L = objs.layout.values
        kind = objs.kind(cb)
        if not kind and objs.type_name(cb) == "functools.partial":
            kind = "functools.partial"   # a heap type on 3.11
        referenced: list[int] = []
        if kind == "method":
            owner = objs.mem.ptr(cb + L["method.self"])
            parent = objs.attr(owner, "_parent_task")
            if parent and parent in self.tasks:
                yield Awaiter(parent)
                return
            referenced.append(owner)
        elif kind == "function":
            closure = objs.mem.ptr(cb + L["function.closure"])
            if closure:
                for cell in objs.tuple_items(closure):
                    content = objs.mem.ptr(cell + L["cell.ref"])
                    if content:
                        referenced.append(content)
        elif kind == "functools.partial":
            args = objs.mem.ptr(cb + L["partial.args"])
            if args:
                referenced.extend(objs.tuple_items(args))
        for obj in referenced:
            yield from self._from_object(obj, depth, seen)

    def _from_object(self, obj: int, depth: int, seen: set[int]) -> Iterable[Awaiter]:
        if obj in seen:
            return
        seen.add(obj)
        objs = self.objs
        if self._is_future(obj):
            if obj in self.tasks:
                return  # a task held by a callback does not await the child
            yield from self._future_awaiters(obj, depth, seen)
            return
        if not objs.kind(obj):   # an instance of a class defined in Python
            # A queue (as_completed's), directly or as an attribute: its getters are
            # the futures that the consuming tasks await.
            queue = obj if objs.attr(obj, "_getters") else objs.attr(obj, "_done")
            getters = objs.attr(queue, "_getters") if queue else None
            if getters:
                for fut in self._deque_items(getters):
                    yield from self._future_awaiters(fut, depth, seen)

    def _future_awaiters(self, fut: int, depth: int, seen: set[int]) -> Iterable[Awaiter]:
        if self._done(fut):
            return   # a done future (a failed gather, a cancelled shield) awaits nothing
        waiters = self.waiting_on.get(fut, ())
        for waiter in waiters:
            yield Awaiter(waiter)
        if waiters:
            return
        nested = list(self._from_callbacks(fut, depth + 1, seen))
        yield from nested
        if not nested and self._type_name(fut) == "_GatheringFuture":
            yield Awaiter(fut, is_task=False, type_name="_GatheringFuture")

    def _deque_items(self, deque: int) -> list[int]:
        L = self.objs.layout.values
        mem = self.objs.mem
        n = mem.i64(deque + L["deque.size"])
        if n <= 0 or n > MAX_CALLBACKS:
            return []
        block = mem.ptr(deque + L["deque.leftblock"])
        index = mem.i64(deque + L["deque.leftindex"])
        blocklen = self.objs.consts.deque_blocklen
        out: list[int] = []
        while block and len(out) < n:
            out.append(mem.ptr(block + L["dequeblock.data"] + 8 * index))
            index += 1
            if index == blocklen:
                block, index = mem.ptr(block + L["dequeblock.rightlink"]), 0
        return out

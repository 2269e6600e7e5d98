"""Plain data: what a snapshot of an asyncio process contains, and the steps a
trace records.

Everything the exporters render comes from these classes; they hold no
addresses to read and no references to the process.  A ``Task`` may come from
a memory read or, when BPF capture runs, from a record taken in kernel space
(``source``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Frame:
    """One Python frame: where a coroutine (or function) is suspended or running."""

    name: str        # co_qualname
    filename: str    # co_filename
    line: int        # 0 when unknown
    kind: str = "coroutine"  # coroutine | generator | async_generator | function


@dataclass(slots=True)
class Awaiter:
    """Something that awaits a task: another task, or a future that is not a task."""

    id: int
    is_task: bool = True
    type_name: str = "Task"


@dataclass(slots=True)
class Task:
    id: int                       # address of the task object
    name: str
    thread_id: int                # native thread id of its loop's thread (0: unknown)
    state: str                    # pending | running
    frames: list[Frame]           # outermost first
    awaited_by: list[Awaiter] = field(default_factory=list)
    awaits: str | None = None     # what the innermost frame waits on, when not a frame
    source: str = "memory"        # memory | bpf
    errors: tuple[str, ...] = ()  # why this record may be partial
    loop: int = 0                 # address of its event loop
    coro: int = 0                 # address of its coroutine (0: not known)


class Stacks:
    """Await stacks shared by the tasks suspended at one place: a tree whose node 0 is
    the empty stack and each other node one frame on top of its parent's stack.  At
    most ``limit`` nodes (``child`` says None then): a forged process may park every
    task in its own place."""

    __slots__ = ("children", "frames", "limit", "parents")

    def __init__(self, limit: int = 1 << 16) -> None:
        self.frames: list[Frame | None] = [None]   # each node's innermost frame
        self.parents: list[int] = [-1]
        self.children: dict[tuple[int, int], int] = {}   # (parent, id(frame)) -> node
        self.limit = limit

    def child(self, parent: int, frame: Frame) -> int | None:
        """The node of ``frame`` on top of ``parent``'s stack (None: the tree is full)."""
        key = (parent, id(frame))   # (the frame is held in ``frames``: its id stays its own)
        node = self.children.get(key)
        if node is None:
            if len(self.frames) >= self.limit:
                return None
            node = self.children[key] = len(self.frames)
            self.frames.append(frame)
            self.parents.append(parent)
        return node

    def node_of(self, frames: list[Frame]) -> int | None:
        """The node of a stack (outermost first); None when the tree is full."""
        node = 0
        for frame in frames:
            child = self.child(node, frame)
            if child is None:
                return None
            node = child
        return node

    def frames_of(self, node: int) -> list[Frame]:
        """The stack of ``node``, outermost first."""
        out: list[Frame] = []
        while node > 0:
            frame = self.frames[node]
            assert frame is not None
            out.append(frame)
            node = self.parents[node]
        out.reverse()
        return out


@dataclass(slots=True)
class Parked:
    """Tasks suspended where their await chains say, as columns: what a summary needs of
    each, without a ``Task`` each (``Collector.snapshot(parked=...)``)."""

    ids: list[int]                # task addresses
    firsts: list[int]             # the task each one is awaited by (0: none, or a future)
    nodes: list[int]              # each one's frames: a node of ``stacks``
    stacks: Stacks


@dataclass(slots=True)
class Thread:
    thread_id: int                # native thread id
    python_thread_id: int         # threading.get_ident()
    interpreter_id: int
    running_loop: int = 0
    running_task: int = 0         # a task of the snapshot seen running on it (0: none)
    running_note: str | None = None   # why the task it named running is not that one


@dataclass(slots=True)
class Snapshot:
    pid: int
    python_version: str
    python_build: str             # e.g. "release, stripped" or "debug, with DWARF"
    executable: str               # as the target sees it
    threads: list[Thread]
    tasks: list[Task]
    taken_at: float               # time.time() when the read started
    duration_s: float
    layout_sources: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    capture: str = "memory"       # memory | bpf+memory
    torn: int = 0                 # reads that tore (the target changed them) and were retaken
    truncated: bool = False       # tasks were left out (more than the collector reads)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a task, as ``aiobpf trace`` records it (bpf/records.py)."""

    task: int
    name: str
    thread_id: int
    start_ns: int            # CLOCK_MONOTONIC
    duration_ns: int         # its own time: until it ended (the next step or the loop's
                             # wait), less the eager steps that ran inside it
    wake_delay_ns: int       # from the loop waking to this step's start (0: unknown)
    state: str               # what the step left: suspended | finished | running | created
    frames: tuple[Frame, ...] = field(default=())   # where it suspended, outermost first
    eager: bool = False      # an eager first step, run inside another step
    nested_ns: int = 0       # eager steps of other tasks that ran inside this one

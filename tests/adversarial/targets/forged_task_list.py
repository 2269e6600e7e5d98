"""A hostile 3.14+ process: once traced, it points its thread's asyncio task list at
millions of forged nodes (a chain through its own memory, back to the head at the end),
then sleeps.  Usage: forged_task_list.py NODES; after READY it reads from stdin the
offset of ``asyncio_tasks_head.next`` in a thread state, and prints FORGED."""

import array
import asyncio  # noqa: F401 - imported: the process is an asyncio candidate
import ctypes
import mmap
import sys
import time

nodes = int(sys.argv[1])
print("READY", flush=True)
offset = int(sys.stdin.readline())
get_tstate = ctypes.pythonapi.PyThreadState_Get
get_tstate.restype = ctypes.c_void_p
head = get_tstate() + offset
# A mebibyte before and after the nodes: every forged "task" is readable memory.
region = mmap.mmap(-1, 8 * nodes + (2 << 20))
base = ctypes.addressof(ctypes.c_char.from_buffer(region)) + (1 << 20)
chain = array.array("Q", range(base + 8, base + 8 * (nodes + 1), 8))
chain[-1] = head                      # the last node leads back: a list, not a loop
ctypes.memmove(base, chain.buffer_info()[0], 8 * nodes)
del chain
ctypes.c_uint64.from_address(head).value = base
print("FORGED", flush=True)
time.sleep(3600)

"""Batched reads of the capture maps: a whole hash map in a few system calls."""

from __future__ import annotations

import ctypes as ct
import errno
import os
from collections.abc import Iterator
from typing import Any

from aiobpf.bpf import abi

BATCH_ENTRIES = 1024   # map entries read per system call


def entries(lib: Any, table: Any, name: str) -> Iterator[tuple]:
    """Every (key, value) of a hash map, BATCH_ENTRIES per system call
    (BPF_MAP_LOOKUP_BATCH, Linux 5.6+) instead of two system calls per entry.  The
    pairs yielded are overwritten by the next batch: copy what is kept.  ``table``: the
    map ``name`` of abi.MAPS as bcc opened it; ``lib``: bcc.lib."""
    key_type, value_type = abi.MAPS[name]
    keys, values = (key_type * BATCH_ENTRIES)(), (value_type * BATCH_ENTRIES)()
    cursor, count = ct.c_uint32(0), ct.c_uint32(0)
    first = True
    while True:
        count.value = BATCH_ENTRIES
        failed = lib.bpf_lookup_batch(
            table.map_fd, None if first else ct.byref(cursor), ct.byref(cursor),
            ct.byref(keys), ct.byref(values), ct.byref(count))
        err = ct.get_errno() if failed else errno.ENOENT
        if err != errno.ENOENT:
            if first and err in (errno.EINVAL, errno.ENOTSUP, errno.ENOSYS):
                yield from table.items()   # a kernel without batch lookups
                return
            raise OSError(err, f"reading the {name} map: {os.strerror(err)}")
        for i in range(count.value):
            yield keys[i], values[i]
        if failed:
            return   # ENOENT: that was the last batch
        first = False

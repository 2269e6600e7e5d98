"""/proc of a target is its words: a file it maps under a name that is not UTF-8 is
read as the bytes it is (it used to raise UnicodeDecodeError out of every maps read)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from aiobpf.collector import procfs

MAPPER = """
import mmap, sys
f = open(sys.argv[1].encode("utf-8", "surrogateescape"), "r+b")
m = mmap.mmap(f.fileno(), 4096)
print("READY", flush=True)
sys.stdin.read()
"""


def test_a_mapped_file_whose_name_is_not_utf8_is_read_as_its_bytes(tmp_path: Path) -> None:
    name = os.fsencode(tmp_path) + b"/map-\xff\xfe.bin"
    with open(name, "wb") as out:
        out.write(b"\0" * 4096)
    proc = subprocess.Popen([sys.executable, "-c", MAPPER, os.fsdecode(name)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        found = [m for m in procfs.read_maps(proc.pid) if os.fsencode(m.path) == name]
        assert len(found) == 1, [m.path for m in procfs.read_maps(proc.pid)]
        assert found[0].inode == os.stat(name).st_ino
    finally:
        proc.kill()
        proc.wait()

"""A user who runs many processes, each with its own copy of _asyncio, gets at most two
of those files probed: removing probes takes the kernel ~0.1 s each, one after another,
so unbounded files would make every window's end and the daemon's stop unbounded, and
one user could take the probes from everyone else's processes."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from contextlib import ExitStack
from pathlib import Path

from aiobpf.bpf.probed import DAEMON_FILES
from tests.adversarial.conftest import User, stop_in_time
from tests.conftest import IN_ROOT_DIR, run_target
from tests.integration.daemon_proc import DaemonProcess, daemon_uprobes, run_daemon
from tests.pythons import by_label

OWN_ASYNCIO = Path(__file__).parent / "targets" / "own_asyncio.py"
COPIES = 4
DEPTH = "many_files_depth.py"   # names of this test's own: no other test's targets traced
SELECT = " " + re.escape(IN_ROOT_DIR) + r"/(own_asyncio|many_files_depth)\.py"


def _probed_files(daemon: DaemonProcess) -> int:
    """Distinct files the daemon holds uprobes in (each held through its own descriptor)."""
    return len({name for name, _ in daemon_uprobes(daemon.proc.pid)})


def test_one_user_gets_two_probed_files_and_the_stop_stays_quick(
        tmp_path: Path, hostile_user: User) -> None:
    assert DAEMON_FILES.per_owner == 2
    python = by_label("sid-3.14")
    assert python.root is not None
    name = "_asyncio.cpython-314-x86_64-linux-gnu.so"
    lib = Path(python.root, "usr/lib/python3.14/lib-dynload", name)
    inside = Path("/tmp") / f"aiobpf-copies-{uuid.uuid4().hex[:8]}"
    copies_dir = Path(python.root) / inside.relative_to("/")
    copies_dir.mkdir()
    try:
        for i in range(COPIES):
            (copies_dir / str(i)).mkdir()
            copy = copies_dir / str(i) / name
            shutil.copyfile(lib, copy)
            os.chown(copy, hostile_user.uid, hostile_user.gid)
        with run_daemon(tmp_path, select=SELECT) as daemon, ExitStack() as stack:
            pids = [stack.enter_context(run_target(python, OWN_ASYNCIO, str(inside / str(i)),
                                                   user=hostile_user.name)).pid
                    for i in range(COPIES)]
            for pid in pids:
                daemon.wait_traced(pid, timeout=30)
            assert _probed_files(daemon) == 2
            refused = daemon.value("aiobpf_errors_total", 'kind="too_many_files"') or 0
            assert refused == COPIES - 2, daemon.log.read_text()[-3000:]
            captures = sorted("".join(daemon.series("aiobpf_process_info", pid)).split(
                'capture="', 1)[1].split('"', 1)[0] for pid in pids)
            assert captures.count("memory") == COPIES - 2, captures
            # root's interpreter file is not the user's share: still probed
            daemon.assert_fresh()
            with run_target(python, "depth.py", "3", "2", name=DEPTH) as fresh:
                daemon.wait_traced(fresh.pid, timeout=10.0)
                info = "".join(daemon.series("aiobpf_process_info", fresh.pid))
                assert 'capture="memory"' not in info, info
                assert _probed_files(daemon) == 3
            stop_in_time(daemon)
    finally:
        shutil.rmtree(copies_dir, ignore_errors=True)

"""A traced process maps another file over its _asyncio range (MAP_FIXED): the daemon's
probes must stay in the file it verified, never land in the file swapped in (a uprobe
belongs to the inode: every process mapping that file would hit the breakpoints)."""

from __future__ import annotations

import mmap
import os
import re
import select
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.adversarial.conftest import User, assert_healthy, stop_in_time
from tests.conftest import IN_ROOT_DIR, run_target
from tests.integration.daemon_proc import DaemonProcess, daemon_uprobes, run_daemon
from tests.pythons import by_label

HOSTILE_TARGET = Path(__file__).parent / "targets" / "swap_asyncio.py"
INT3 = 0xCC
WATCH_S = 8.0   # several capture windows (window 0.2 s, duty well below 1)
# The targets run under names of their own, so that this daemon traces no other test's
# processes.
LEGIT, DEPTH = "probe_swap_alternating.py", "probe_swap_depth.py"
SELECT = (" " + re.escape(IN_ROOT_DIR) +
          r"/(swap_asyncio|probe_swap_alternating|probe_swap_depth)\.py")




def _asyncio_mapping(pid: int) -> list[str]:
    """The fields of the first line of /proc/PID/maps that maps an _asyncio module."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and os.path.basename(fields[5]).startswith("_asyncio."):
            return fields
    pytest.fail(f"pid {pid} maps no _asyncio module")


def _probed_files(daemon: DaemonProcess) -> dict[tuple[int, int], set[int]]:
    """(device, inode) -> offsets of the uprobes the daemon holds now."""
    out: dict[tuple[int, int], set[int]] = {}
    for name, offset in daemon_uprobes(daemon.proc.pid):
        # a probe attached through a descriptor the daemon holds: resolve it in the daemon
        name = name.replace("/proc/self/", f"/proc/{daemon.proc.pid}/", 1)
        try:
            st = os.stat(name)
        except OSError:
            continue
        out.setdefault((st.st_dev, st.st_ino), set()).add(offset)
    return out


def _read_line(proc, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""


def test_probes_never_land_in_a_file_swapped_over_the_asyncio_range(
        tmp_path: Path, hostile_user: User) -> None:
    python = by_label("sid-3.14")
    assert python.root is not None
    decoy_name = f"aiobpf-decoy-{uuid.uuid4().hex[:8]}.so"
    decoy_host = Path(f"{python.root}{IN_ROOT_DIR}") / decoy_name
    try:
        with (run_target(python, HOSTILE_TARGET, f"{IN_ROOT_DIR}/{decoy_name}",
                         user=hostile_user.name) as hostile,
              run_daemon(tmp_path, budget=0.1, probe_cost_us=2.0, select=SELECT,
                         extra="window = 0.2\n") as daemon):
            daemon.wait_traced(hostile.pid)
            # a legitimate process of the same Python, traced after the hostile one
            with run_target(python, "alternating.py", "20", "0", name=LEGIT) as legit:
                daemon.wait_traced(legit.pid)
                real_path = f"/proc/{legit.pid}/map_files/{_asyncio_mapping(legit.pid)[0]}"
                real_st = os.stat(real_path)
                real = (real_st.st_dev, real_st.st_ino)
                deadline = time.monotonic() + 15
                while not (offsets := _probed_files(daemon).get(real)):
                    assert time.monotonic() < deadline, "no probes on _asyncio in 15 s"
                    time.sleep(0.05)
                # the file swapped in: a copy of _asyncio the hostile user can read,
                # mapped (executable) by a second, untraced process: this one
                shutil.copyfile(real_path, decoy_host)
                os.chmod(decoy_host, 0o644)
                decoy_st = os.stat(decoy_host)
                decoy = (decoy_st.st_dev, decoy_st.st_ino)
                with open(decoy_host, "rb") as stream:
                    peek = mmap.mmap(stream.fileno(), 0, flags=mmap.MAP_PRIVATE,
                                     prot=mmap.PROT_READ | mmap.PROT_EXEC)
                first = _asyncio_mapping(hostile.pid)
                Path(f"{decoy_host}.range").write_text(" ".join(
                    [*first[0].split("-"), first[1], first[2]]))
                try:
                    assert all(peek[o] != INT3 for o in offsets)
                    hits_before = daemon.value("aiobpf_probe_hits_total",
                                               f'pid="{legit.pid}"') or 0.0
                    os.kill(hostile.pid, signal.SIGUSR1)
                    said = _read_line(hostile.proc, 10.0)
                    assert said.startswith("SWAPPED"), said

                    breakpoints, in_real, in_decoy = 0, 0, 0
                    deadline = time.monotonic() + WATCH_S
                    while time.monotonic() < deadline:
                        breakpoints += sum(peek[o] == INT3 for o in offsets)
                        probed = _probed_files(daemon)
                        in_real += bool(probed.get(real))
                        in_decoy += bool(probed.get(decoy))
                        time.sleep(0.02)
                    breakpoints += sum(peek[o] == INT3 for o in offsets)
                finally:
                    peek.close()
                assert hostile.proc.poll() is None, "the hostile target died"
                assert breakpoints == 0 and in_decoy == 0, (
                    f"uprobes placed in the swapped-in file ({breakpoints} breakpoints seen "
                    f"in an untraced process's mapping, {in_decoy} samples of probes on "
                    f"it):\n{daemon.log.read_text()[-3000:]}")
                # the swap was noticed, said and counted
                assert (daemon.value("aiobpf_errors_total", 'kind="probe_file_changed"')
                        or 0) >= 1, daemon.log.read_text()[-3000:]
                assert f"pid {hostile.pid}: it mapped another file" in daemon.log.read_text()
                # the real file is still traced for the legitimate process
                assert in_real > 0, "no probes on the real _asyncio after the swap"
                hits_after = daemon.value("aiobpf_probe_hits_total", f'pid="{legit.pid}"')
                assert hits_after is not None and hits_after > hits_before
            assert_healthy(daemon, DEPTH)
            stop_in_time(daemon)
    finally:
        decoy_host.unlink(missing_ok=True)
        Path(f"{decoy_host}.range").unlink(missing_ok=True)

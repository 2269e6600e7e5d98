"""A real ``aiobpf daemon`` for the tests: started with a temporary config on loopback,
scraped over HTTP, stopped with SIGTERM (killed if it does not stop)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import TARGETS
from tests.integration.prom import free_port

REPO = Path(__file__).resolve().parents[2]
TOP_SITES = 10
# Only the test targets are traced, never other Pythons of the machine.
SELECT = (r" (/home/user|" + re.escape(str(TARGETS)) +
          r")/(depth|loop_lag|many_sites|exec_into|alternating|seed_app)\.py")


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    port: int
    socket: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape(self, timeout: float = 10) -> str:
        with urllib.request.urlopen(self.url, timeout=timeout) as reply:
            return reply.read().decode()

    def series(self, name: str, pid: int) -> list[str]:
        return [line for line in self.scrape().splitlines()
                if line.startswith(name) and f'pid="{pid}"' in line]

    def wait_traced(self, pid: int, timeout: float = 5.0) -> float:
        """Seconds until ``pid`` shows in the metrics; fails after ``timeout``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.series("aiobpf_process_info", pid):
                return time.monotonic() - t0
            time.sleep(0.1)
        pytest.fail(f"pid {pid} not in the metrics after {timeout} s:\n{self.log.read_text()}")

    def wait_untraced(self, pid: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.series("aiobpf_process_info", pid):
            if time.monotonic() > deadline:
                pytest.fail(f"pid {pid} still in the metrics after {timeout} s")
            time.sleep(0.1)

    def value(self, name: str, labels: str = "") -> float | None:
        """The value of the first sample ``name{labels...}`` of a scrape (None: absent)."""
        for line in self.scrape().splitlines():
            if line.startswith(name + ("{" if labels else "")) and labels in line:
                return float(line.rsplit(" ", 1)[1])
            if not labels and line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def assert_fresh(self, within: float = 5.0) -> None:
        """The daemon's loop is alive: its last-scan timestamp advances."""
        first = self.value("aiobpf_last_scan_timestamp_seconds") or 0.0
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.value("aiobpf_last_scan_timestamp_seconds") or 0.0
            if now > first:
                return
        pytest.fail(f"the daemon's last scan did not advance in {within} s "
                    f"(stuck at {first}):\n{self.log.read_text()[-3000:]}")

    def stop_within(self, seconds: float = 3.0) -> float:
        """SIGTERM; fails unless the daemon exits within ``seconds``.  Returns the time taken."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"the daemon did not stop within {seconds} s of SIGTERM:\n"
                        f"{self.log.read_text()[-3000:]}")
        return time.monotonic() - t0

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(ln.split()[1] for ln in status.splitlines()
                        if ln.startswith("VmRSS"))) / 1024


@contextmanager
def run_daemon(tmp: Path, *, budget: float = 1.0, refresh: float = 1.0,
               select: str = SELECT, socket_dir: Path | None = None, bpf: bool = True,
               probe_cost_us: float | None = None, extra: str = "",
               env: dict[str, str] | None = None, wrapper: list[str] | None = None,
               verbose: int = 1, args: Sequence[str] = (),
               process: Callable[[subprocess.Popen, int, Path, Path], DaemonProcess]
               = DaemonProcess) -> Iterator[DaemonProcess]:
    """A daemon tracing the processes that match ``select``; with the default budget
    (1.0) and per-step cost (measured: "auto"), the test targets are captured in full.
    ``wrapper``: a command that execs the daemon's (e.g. setpriv, to drop capabilities);
    ``args``: more of the daemon's options; ``process``: what wraps it (how it is
    scraped), from (process, port, socket, log)."""
    port = free_port()
    sock = (socket_dir or tmp / "run") / "aiobpf.sock"
    config = tmp / "aiobpf.toml"
    config.write_text(
        "[daemon]\n"
        f'listen = "127.0.0.1:{port}"\n'
        f'socket = "{sock}"\n'    # scan_interval: the default (1 s)
        f"refresh_interval = {refresh}\n"
        f"budget = {budget}\n"
        f"top_sites = {TOP_SITES}\n"
        f"bpf = {str(bpf).lower()}\n"
        + (f"probe_cost_us = {probe_cost_us}\n" if probe_cost_us is not None else "")
        + extra +
        "[select]\n"
        f"cmdline = [{json.dumps(select)}]\n")
    log = tmp / f"daemon-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*(wrapper or []), sys.executable, "-m", "aiobpf", "daemon",
                                 "--config", str(config), "-" + "v" * verbose, *args],
                                stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO, start_new_session=True,
                                env={**os.environ, **(env or {})})
    daemon = process(proc, port, sock, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                daemon.scrape(timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the daemon did not start:\n{log.read_text()}")
                time.sleep(0.2)
        yield daemon
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert "Traceback" not in log.read_text(), log.read_text()


def probes_of(pid: int) -> list[dict]:
    """The probes with a BPF program that process ``pid`` holds, from the kernel: its
    perf events (uprobes, raw tracepoints; bpftool) and its uprobe-multi links (their
    fdinfo), each as a dict with ``fd_type``, and ``filename`` and ``offset`` for
    uprobes."""
    out = subprocess.run(["bpftool", "perf", "list", "--json"], capture_output=True,
                         text=True, check=True).stdout
    found = [e for e in json.loads(out) if e.get("pid") == pid]
    for fields, info in bpf_fdinfo(pid, "bpf_link"):
        kind = fields.get("link_type", "")
        if kind not in ("uprobe_multi", "uretprobe_multi"):
            continue
        table = info.split("ref_ctr_offset", 1)[1].splitlines()[1:]
        for row in table:   # cookie, offset, ref_ctr_offset
            found.append({"pid": pid, "fd_type": kind.replace("_multi", ""),
                          "filename": fields["path"], "offset": int(row.split()[1], 16)})
    return found


def daemon_uprobes(pid: int) -> set[tuple[str, int]]:
    """(file, offset) of the uprobes (not uretprobes) a process holds, from the kernel."""
    return {(e["filename"], e["offset"]) for e in probes_of(pid) if e.get("fd_type") == "uprobe"}


def program_ids(pid: int) -> set[int]:
    """IDs of the BPF programs a process holds open (``prog_id`` in its fdinfo)."""
    return {int(fields["prog_id"]) for fields, _ in bpf_fdinfo(pid, "bpf-prog")}


def link_ids(pid: int) -> set[int]:
    """IDs of the BPF links a process holds open (``link_id`` in its fdinfo)."""
    return {int(fields["link_id"]) for fields, _ in bpf_fdinfo(pid, "bpf_link")}


def bpf_object_exists(kind: str, ident: int) -> bool:
    """Whether the kernel still has BPF object ``kind`` (prog, link, map) ``ident``,
    whoever holds it."""
    return subprocess.run(["bpftool", kind, "show", "id", str(ident)], capture_output=True,
                          timeout=30).returncode == 0


def bpf_objects_left(programs: set[int], links: set[int], within: float = 10.0
                     ) -> list[str]:
    """The programs and links of these ids still in the kernel once ``within`` seconds
    have passed or none is (a BPF object is freed after an RCU grace period)."""
    deadline = time.monotonic() + within
    while True:
        left = ([f"prog {i}" for i in programs if bpf_object_exists("prog", i)]
                + [f"link {i}" for i in links if bpf_object_exists("link", i)])
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def bpf_fdinfo(pid: int, kind: str) -> Iterator[tuple[dict[str, str], str]]:
    """The fdinfo of each BPF object of ``kind`` (``bpf-prog``, ``bpf-map``, ``bpf_link``:
    its anon inode's name) that ``pid`` holds: its "key: value" lines as a dict of
    stripped values, and the whole text.  None when ``pid`` is gone (its objects went
    with its descriptors)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return
    for fd in fds:
        try:
            if os.readlink(fd) != f"anon_inode:{kind}":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue   # closed meanwhile
        yield {key: value.strip() for key, value in
               (line.split(":", 1) for line in info.splitlines() if ":" in line)}, info


def daemon_programs(pid: int) -> int:
    """BPF programs a process holds open (fdinfo of its descriptors)."""
    return len(program_ids(pid))

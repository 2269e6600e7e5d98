#!/usr/bin/env python3
"""``aiobpf ps PID --capture bpf`` of a busy process whose probes the daemon windows.

The target (tests/targets/alternating.py 50 0, Debian sid's 3.14) steps as fast as it
can, so at the default budget (1%) the daemon attaches its probes a fraction of a
percent of the time.  Each round starts a daemon, waits until the target is windowed
and its probes are off, then times, interleaved, the whole command line:

- through the daemon, which opens a window for the dump (``--window`` 0.3 s) and
  answers from its records;
- ``--no-daemon``: the command compiles and attaches probes of its own, which is what
  a dump through the daemon did while its probes were off, before the daemon opened
  windows on request (it handed the dump back to the command line).

A fresh daemon per round: at the default budget a daemon grants one early window per
pause (minutes for this target).  Run as root: ``.venv/bin/python bench/daemon_dump.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import run_target  # noqa: E402
from tests.integration.daemon_proc import daemon_uprobes, run_daemon  # noqa: E402
from tests.pythons import by_label  # noqa: E402

SCRIPT = "bench_dump_busy.py"   # alternating.py under a name no other daemon selects
SAID = "aiobpf: the daemon did not answer"


def _dump(pid: int, sock: Path, *extra: str) -> tuple[float, str, dict]:
    """Seconds, stderr and the JSON document of one ``aiobpf ps --capture bpf``."""
    argv = [sys.executable, "-m", "aiobpf", "ps", str(pid), "--format", "json",
            "--capture", "bpf", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "AIOBPF_SOCKET": str(sock)}
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"aiobpf ps failed: {out.stderr}")
    return took, out.stderr, json.loads(out.stdout)


def _windowed_and_off(daemon, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        windowed = f"{pid}: probes attached" in daemon.log.read_text() and \
            "% of the time, in windows" in daemon.log.read_text()
        if windowed and not daemon_uprobes(daemon.proc.pid):
            return
        time.sleep(0.1)
    raise SystemExit("the target was not windowed in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the daemon loads BPF programs")
    via: list[float] = []
    direct: list[float] = []
    from_bpf: list[int] = []
    with run_target(by_label("sid-3.14"), "alternating.py", "50", "0", name=SCRIPT) as busy:
        for _ in range(args.rounds):
            with (tempfile.TemporaryDirectory() as tmp,
                  run_daemon(Path(tmp), budget=0.01, select=rf"/{SCRIPT}") as daemon):
                _windowed_and_off(daemon, busy.pid)
                took, err, doc = _dump(busy.pid, daemon.socket)
                if SAID in err:
                    raise SystemExit(f"the daemon handed the dump back: {err}")
                via.append(took)
                from_bpf.append(sum(t["source"] == "bpf" for t in doc["tasks"]))
                took, err, doc = _dump(busy.pid, daemon.socket, "--no-daemon")
                direct.append(took)
    print(f"aiobpf ps --capture bpf of a windowed busy 3.14 process, {args.rounds} rounds")
    print(f"through the daemon (window on request): median {statistics.median(via):.2f} s "
          f"(min {min(via):.2f}, max {max(via):.2f}); tasks from BPF records: "
          f"{statistics.median(from_bpf):.0f} of 51")
    print(f"the command's own capture (--no-daemon): median {statistics.median(direct):.2f} s "
          f"(min {min(direct):.2f}, max {max(direct):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""The daemon's memory: kernel (BPF maps) and user space (RSS), idle and with a big target.

Starts ``aiobpf daemon`` (budget 1, so the probes stay attached: full capture; BPF on;
every other setting the default) tracing only tests/targets/hoard.py, then
python3.14 (the Debian sid root) running hoard.py, which creates 200,000 tasks (groups
of 100 under TaskGroups, three coroutines deep) once the daemon traces it, so that
each task's first step reaches the probes (and the ``records`` map fills up); reports:

- the kernel memory of the daemon's BPF maps: the sum of ``memlock`` over the map
  descriptors it holds (/proc/PID/fdinfo, what the kernel charges for each map), idle
  and while tracing, per map too;
- the daemon's RSS: its peak at start (bcc's compile), at base (idle, after start),
  its peak while the target starts and is read (VmHWM, reset at base), between memory
  reads (samples every 0.1 s while traced: the lowest and the median), and after the
  target exits.

Run as root: ``.venv/bin/python bench/memory.py [--tasks 200000] [--watch 30]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SID_ROOT = Path(os.environ.get("AIOBPF_SID_ROOT", "/var/cache/aiobpf/sid-root"))
PYTHON = "/usr/bin/python3.14"
TARGET = "/home/user/hoard.py"
MB = 1024 * 1024


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def anon_mb(pid: int) -> float:
    """The daemon's own heap: RSS without file pages (bcc's clang/LLVM code is in
    RSS too unless the daemon could page it out, which it cannot while another
    process maps the same libraries)."""
    return _status_kb(pid, "RssAnon") / 1024


def map_memory(pid: int) -> dict[str, int]:
    """Bytes the kernel charges for each BPF map ``pid`` holds open (fdinfo memlock)."""
    out: dict[str, int] = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:bpf-map":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        map_id = fields.get("map_id", "?").strip()
        out[map_id] = int(fields.get("memlock", "0").strip())
    return out


def map_names(ids: list[str]) -> dict[str, str]:
    """Map id -> name, from bpftool (the names bcc gave the maps)."""
    try:
        shown = json.loads(subprocess.run(["bpftool", "map", "show", "--json"],
                                          capture_output=True, text=True, check=True).stdout)
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError):
        return {}
    return {str(m["id"]): m.get("name", "?") for m in shown if str(m["id"]) in ids}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        return reply.read().decode()


def sample(text: str, name: str, pid: int | None = None) -> float | None:
    for line in text.splitlines():
        if line.startswith(name) and (pid is None or f'pid="{pid}"' in line):
            return float(line.rsplit(" ", 1)[1])
    return None


def start_daemon(workdir: Path) -> tuple[subprocess.Popen, int]:
    port = _port()
    config = workdir / "aiobpf.toml"
    config.write_text("[daemon]\n"
                      f'listen = "127.0.0.1:{port}"\n'
                      f'socket = "{workdir / "aiobpf.sock"}"\n'
                      "budget = 1.0\n"
                      "bpf = true\n"
                      "[select]\n"
                      f"cmdline = [{json.dumps(re.escape(TARGET))}]\n")
    log = (workdir / "daemon.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "aiobpf", "daemon", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            scrape(port)
            return proc, port
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start: {workdir / 'daemon.log'}") from exc
            time.sleep(0.2)


def start_target(n: int) -> subprocess.Popen:
    dest = SID_ROOT / TARGET.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "tests" / "targets" / "hoard.py", dest)
    return subprocess.Popen(["chroot", str(SID_ROOT), PYTHON, "-u", TARGET, str(n), "0"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def watch(daemon: int, seconds: float, until=None, anon: list[float] | None = None
          ) -> list[float]:
    """RSS samples every 0.1 s for ``seconds`` (or until ``until()`` is true); the
    anonymous RSS into ``anon``."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until()):
        samples.append(rss_mb(daemon))
        if anon is not None:
            anon.append(anon_mb(daemon))
        time.sleep(0.1)
    return samples


def run(tasks: int, watch_s: float) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="aiobpf-bench-memory-"))
    daemon, port = start_daemon(workdir)
    target: subprocess.Popen | None = None
    result: dict = {"tasks": tasks}
    try:
        time.sleep(5)   # settled: compiled, calibrated, first scans done
        result["base_rss_mb"] = rss_mb(daemon.pid)
        result["base_anon_mb"] = anon_mb(daemon.pid)
        result["start_peak_rss_mb"] = _status_kb(daemon.pid, "VmHWM") / 1024   # bcc's compile
        result["base_maps"] = map_memory(daemon.pid)
        Path(f"/proc/{daemon.pid}/clear_refs").write_text("5")   # VmHWM := VmRSS
        target = start_target(tasks)
        assert target.stdout is not None
        ready = target.stdout.readline()
        if not ready.startswith("READY"):
            raise SystemExit(f"hoard.py {tasks} did not start")
        deadline = time.monotonic() + 60
        while not (sample(scrape(port), "aiobpf_task_steps_total", target.pid) or 0) > 0:
            if time.monotonic() > deadline:
                raise SystemExit("the target's steps are not seen: no probes?")
            time.sleep(0.2)
        os.kill(target.pid, signal.SIGUSR2)   # now the tasks
        hoarded = target.stdout.readline()
        if not hoarded.startswith("HOARDED"):
            raise SystemExit(f"hoard.py {tasks}: {hoarded!r}")
        pending = int(hoarded.split()[1])   # every task the target has (main included)
        result["pending"] = pending

        def counted() -> bool:
            return sample(scrape(port), "aiobpf_tasks_pending", target.pid) == pending

        t0 = time.monotonic()
        anon: list[float] = []
        watch(daemon.pid, 300, counted, anon)
        result["first_full_read_s"] = time.monotonic() - t0
        steady_anon: list[float] = []
        steady = watch(daemon.pid, watch_s, anon=steady_anon)
        result["anon_peak_mb"] = max(anon + steady_anon)
        result["between_reads_anon_mb"] = statistics.median(steady_anon)
        text = scrape(port)
        result["tracing_maps"] = map_memory(daemon.pid)
        result["peak_rss_mb"] = _status_kb(daemon.pid, "VmHWM") / 1024
        result["between_reads_rss_mb"] = {"min": min(steady), "median": statistics.median(steady),
                                          "max": max(steady)}
        result["capture"] = [m.group(1) for line in text.splitlines()
                             if line.startswith("aiobpf_process_info{")
                             and f'pid="{target.pid}"' in line
                             and (m := re.search(r'capture="(\w+)"', line))]
        result["errors"] = {m[0]: float(m[1]) for m in re.findall(
            r'aiobpf_errors_total{kind="(\w+)"} (\S+)', text)}
        stop(target)
        gone_pid, target = target.pid, None
        deadline = time.monotonic() + 30
        while sample(scrape(port), "aiobpf_process_info", gone_pid) is not None:
            if time.monotonic() > deadline:
                raise SystemExit("the target is still traced 30 s after it exited")
            time.sleep(0.2)
        after = watch(daemon.pid, 10)
        result["after_exit_rss_mb"] = after[-1]
        result["after_exit_anon_mb"] = anon_mb(daemon.pid)
        result["after_exit_maps"] = map_memory(daemon.pid)
        ids = sorted(set(result["base_maps"]) | set(result["tracing_maps"]))
        result["map_names"] = map_names(ids)
    finally:
        if target is not None:
            stop(target)
        stop(daemon)
    result["daemon_log_tracebacks"] = (workdir / "daemon.log").read_text().count("Traceback")
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def report(r: dict) -> str:
    names = r.get("map_names", {})

    def maps(key: str) -> str:
        per = r[key]
        detail = ", ".join(f"{names.get(i, i)} {b / MB:.2f}" for i, b in
                           sorted(per.items(), key=lambda kv: -kv[1]) if b >= 0.01 * MB)
        return f"{sum(per.values()) / MB:7.1f} MB  ({detail})"

    between = r["between_reads_rss_mb"]
    return "\n".join([
        f"aiobpf daemon memory, budget 1, BPF on; target: hoard.py {r['tasks']} "
        f"({r['pending']} pending tasks) under python3.14",
        f"  kernel BPF maps, idle:            {maps('base_maps')}",
        f"  kernel BPF maps, tracing:         {maps('tracing_maps')}",
        f"  kernel BPF maps, after exit:      {maps('after_exit_maps')}",
        f"  RSS peak at start (bcc compile):  {r['start_peak_rss_mb']:7.1f} MB",
        f"  RSS at base:                      {r['base_rss_mb']:7.1f} MB",
        f"  RSS peak (VmHWM) while tracing:   {r['peak_rss_mb']:7.1f} MB",
        f"  RSS between reads (min / median): {between['min']:7.1f} / {between['median']:.1f} MB "
        f"(max {between['max']:.1f})",
        f"  RSS 10 s after the target exited: {r['after_exit_rss_mb']:7.1f} MB",
        f"  anonymous RSS: base {r['base_anon_mb']:.1f} MB, peak (sampled) "
        f"{r['anon_peak_mb']:.1f} MB, between reads {r['between_reads_anon_mb']:.1f} MB, "
        f"after exit {r['after_exit_anon_mb']:.1f} MB",
        f"  first complete read:              {r['first_full_read_s']:7.1f} s; capture "
        f"{','.join(r['capture'])}; errors {r['errors'] or 'none'}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--watch", type=float, default=30.0,
                        help="seconds of RSS samples while the target is traced")
    parser.add_argument("--json", action="store_true", help="print the raw figures too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the daemon needs BPF and ptrace")
    result = run(args.tasks, args.watch)
    print(report(result))
    if args.json:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

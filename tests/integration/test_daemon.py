"""The daemon and the exporter, end to end: real targets, real BPF, a real Prometheus.

- metrics: values checked through Prometheus's query API against targets whose shape
  is known (tasks at a known depth, a step that blocks the loop, loop lag);
- discovery: processes that start are traced within 5 s, those that exit or exec go;
  several Python versions at once, one probe set per file;
- dumps: through the daemon's socket, the same output as a direct read, faster;
  root-only;
- cardinality: 100k task names and 10k await sites stay under the series cap;
- faults: a target killed mid-scrape, a target that execs, the daemon killed and
  started again, a scrape storm.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from aiobpf.exporters.metrics import series_cap
from tests.conftest import TARGETS, aiobpf, run_target
from tests.integration.daemon_proc import (
    REPO,
    TOP_SITES,
    DaemonProcess,
    daemon_programs,
    daemon_uprobes,
    program_ids,
    run_daemon,
)
from tests.integration.prom import Prometheus, free_port
from tests.pythons import by_label
from tests.step_count import StepLog


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator:
    servers: list[Prometheus] = []

    def start(daemon: DaemonProcess) -> Prometheus:
        server = Prometheus(tmp_path, [f"127.0.0.1:{daemon.port}"])
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# -- acceptance 1: values through a real Prometheus --------------------------------------------
def test_metrics_in_prometheus(tmp_path: Path, prometheus_for) -> None:
    python = by_label("sid-3.14")
    with (run_target(python, "depth.py", "50", "4") as shaped,
          run_target(python, "loop_lag.py", "0.05", "0.2") as lagging,
          run_daemon(tmp_path) as daemon):
        daemon.wait_traced(shaped.pid)
        daemon.wait_traced(lagging.pid)
        prom = prometheus_for(daemon)
        sel = f'pid="{shaped.pid}"'
        # 50 workers of 4 frames, and main (1 frame) awaiting them
        prom.wait_for(f"aiobpf_tasks_pending{{{sel}}}", lambda v: v == 51)
        bucket = f"aiobpf_task_stack_depth_bucket{{{sel},le=\"%s\"}}"
        assert prom.value(bucket % "3") == 1
        assert prom.value(bucket % "4") == 51
        assert prom.value(bucket % "+Inf") == 51
        awaits = f"aiobpf_task_await_depth_bucket{{{sel},le=\"%s\"}}"
        assert prom.value(awaits % "0") == 1       # main is a root
        assert prom.value(awaits % "1") == 51      # each worker is awaited by main
        sites = prom.query(f"aiobpf_suspended_tasks{{{sel}}}")
        by_site = {r["metric"]["site"]: float(r["value"][1]) for r in sites}
        line = next(n for n, text in enumerate((TARGETS / "depth.py").read_text()
                                                .splitlines(), 1) if "await fut" in text)
        assert by_site[f"level /home/user/depth.py:{line}"] == 50
        # the blocker's 50 ms steps: between 2^24 ns (16.8 ms) and 2^26 ns (67.1 ms)
        lag = f'pid="{lagging.pid}"'
        long_steps = (f'aiobpf_task_step_duration_seconds_bucket{{{lag},le="0.067108864"}} - '
                      f'ignoring(le) aiobpf_task_step_duration_seconds_bucket'
                      f'{{{lag},le="0.016777216"}}')
        prom.wait_for(long_steps, lambda v: v is not None and v >= 3)
        assert prom.value(f'aiobpf_task_step_duration_seconds_bucket{{{lag},le="0.067108864"}}'
                          ) == prom.value(f"aiobpf_task_step_duration_seconds_count{{{lag}}}")
        # victims woken with the blocker wait for it: loop lag of about 50 ms
        lagged = (f'aiobpf_task_wakeup_delay_seconds_bucket{{{lag},le="0.067108864"}} - '
                  f'ignoring(le) aiobpf_task_wakeup_delay_seconds_bucket'
                  f'{{{lag},le="0.016777216"}}')
        prom.wait_for(lagged, lambda v: v is not None and v >= 4)
        assert prom.value(f"aiobpf_capture_fraction{{{lag}}}") == 1.0
        assert prom.value(f'count(aiobpf_process_info{{pid=~"{shaped.pid}|{lagging.pid}"}})') == 2
        assert prom.value("aiobpf_attached_processes") >= 2
        assert prom.value('aiobpf_build_info{version!=""}') == 1


def test_budget_windows_a_busy_process(tmp_path: Path) -> None:
    """At the default budget (1%), a process stepping as fast as it can (steps of ~8 us,
    cheaper than the probes) is captured in windows: probes come and go, the estimate
    stays within the budget, and counts are estimated beyond what the probes saw,
    within 2.5x of the process's own count (the bound for steps cheaper than the probes;
    test_estimates.py holds steps of a small handler's cost to 25%)."""
    python = by_label("sid-3.14")
    select = r" (/home/user|" + re.escape(str(TARGETS)) + r")/bursty\.py"
    with (run_target(python, "bursty.py", "20", "on:3600", "300") as busy,
          run_daemon(tmp_path, budget=0.01, select=select) as daemon):
        truth = StepLog()
        assert busy.proc.stdout is not None
        truth.follow(busy.proc.stdout)
        daemon.wait_traced(busy.pid)
        first = (time.monotonic(), daemon.value("aiobpf_task_steps_total",
                                                f'pid="{busy.pid}"') or 0.0)
        seen_probes = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            seen_probes.add(bool(daemon_uprobes(daemon.proc.pid)))
            time.sleep(0.1)
        assert seen_probes == {True, False}          # attached in windows, not all along
        scraped_at = time.monotonic()
        text = daemon.scrape()

        def value(name: str) -> float:
            line = next(ln for ln in text.splitlines()
                        if ln.startswith(name + "{") and f'pid="{busy.pid}"' in ln)
            return float(line.rsplit(" ", 1)[1])

        assert 'capture="windowed"' in "".join(daemon.series("aiobpf_process_info", busy.pid))
        plan = re.search(rf"pid [0-9, ]*\b{busy.pid}\b[0-9, ]*: probes attached ([0-9.]+)% of "
                         "the time, in windows", daemon.log.read_text())
        assert plan is not None, daemon.log.read_text()[-3000:]   # -v says the plan
        fraction = value("aiobpf_capture_fraction")
        assert 0 < fraction < 0.5
        assert value("aiobpf_estimated_overhead_ratio") <= 0.0101
        # the cost per step is measured (trap, programs, syscall hooks): within reason
        assert 0.1e-6 < value("aiobpf_step_cost_seconds") < 50e-6
        hits, steps = value("aiobpf_probe_hits_total"), value("aiobpf_task_steps_total")
        assert steps > 2 * hits                      # estimated beyond what was seen
        true = (truth.at(scraped_at) or 0.0) - (truth.at(first[0]) or 0.0)
        counted = steps - first[1]
        assert 0.4 < counted / true < 2.5, (counted, true)
        print(f"windowed: captured {100 * fraction:.1f}% of the time, {hits:.0f} steps seen, "
              f"{counted:.0f} estimated for {true:.0f} true, "
              f"{1e6 * value('aiobpf_step_cost_seconds'):.2f} us per captured step")


def test_memory_only_daemon_places_no_probes(tmp_path: Path) -> None:
    """`bpf = false`: the process is traced from memory reads alone; no program and no
    probe is loaded, and the step metrics are absent rather than zero."""
    python = by_label("sid-3.14")
    with (run_target(python, "depth.py", "20", "3") as target,
          run_daemon(tmp_path, bpf=False) as daemon):
        daemon.wait_traced(target.pid)
        deadline = time.monotonic() + 10
        while not daemon.series("aiobpf_tasks_pending", target.pid):
            assert time.monotonic() < deadline, "no memory read in 10 s"
            time.sleep(0.2)
        assert 'capture="memory"' in "".join(daemon.series("aiobpf_process_info", target.pid))
        assert daemon.series("aiobpf_tasks_pending", target.pid)[0].endswith(" 21.0")
        assert not daemon.series("aiobpf_task_steps_total", target.pid)
        assert daemon_uprobes(daemon.proc.pid) == set()
        assert daemon_programs(daemon.proc.pid) == 0


# -- acceptance 2: discovery, several versions, one probe set per file -------------------------
def test_discovery_three_versions_one_probe_set_per_file(tmp_path: Path) -> None:
    pythons = [by_label("sid-3.14"), by_label("sid-3.14"), by_label("sid-3.15")]
    pyenv = by_label("pyenv-3.12.1")
    if pyenv.available():
        pythons.append(pyenv)
    with run_daemon(tmp_path) as daemon, ExitStack() as stack:
        targets = []
        for python in pythons:
            target = stack.enter_context(run_target(python, "alternating.py", "4", "0.001"))
            took = daemon.wait_traced(target.pid, timeout=5.0)
            targets.append(target)
            print(f"{python.label}: traced {took:.1f} s after READY")
        versions = {line.split('python="')[1].split('"')[0]
                    for t in targets for line in daemon.series("aiobpf_process_info", t.pid)}
        assert len(versions) == len({p.label for p in pythons})
        # one uprobe per probe site and file: the two 3.14 processes share theirs (3.12+:
        # the step functions and Task.__init__, whose uretprobe is not listed here)
        probes = daemon_uprobes(daemon.proc.pid)
        files = {name for name, _ in probes}
        assert len(files) == len({p.label for p in pythons}), probes
        assert len(probes) == 3 * len(files), probes
        for target in targets:
            assert daemon.series("aiobpf_task_steps_total", target.pid)
        # exits are noticed
        first = targets[0]
        first.proc.kill()
        first.proc.wait()
        daemon.wait_untraced(first.pid)
        assert daemon_uprobes(daemon.proc.pid) == probes   # the other 3.14 keeps the file's


# -- acceptance 3: dumps through the daemon ----------------------------------------------------
def test_dumps_through_the_daemon(tmp_path: Path) -> None:
    python = by_label("sid-3.14")
    with run_target(python, "seed_app.py") as target, run_daemon(tmp_path) as daemon:
        daemon.wait_traced(target.pid)
        sock = str(daemon.socket)
        for command, fmt in (("pstree", "tree"), ("ps", "table"), ("ps", "csv")):
            # BPF records: the daemon has them; a direct read compiles and attaches anew
            t0 = time.perf_counter()
            via = aiobpf(command, str(target.pid), "--format", fmt, "--capture", "bpf",
                         socket=sock)
            t_daemon = time.perf_counter() - t0
            t0 = time.perf_counter()
            direct = aiobpf(command, str(target.pid), "--format", fmt, "--capture", "bpf",
                            "--no-daemon", socket=sock)
            t_direct = time.perf_counter() - t0
            assert via.returncode == direct.returncode == 0, (via.stderr, direct.stderr)
            assert via.stdout == direct.stdout
            print(f"{command} --format {fmt}: daemon {t_daemon:.2f} s, direct {t_direct:.2f} s")
            assert t_daemon < t_direct
            memory = aiobpf(command, str(target.pid), "--format", fmt, "--capture", "memory",
                            socket=sock)
            assert memory.stdout == direct.stdout
        doc = aiobpf("ps", str(target.pid), "--format", "json", socket=sock).json()
        assert doc["pid"] == target.pid and doc["tasks"]
        # an untraced process: the CLI reads it itself
        unknown = aiobpf("ps", str(os.getpid()), socket=sock)
        assert unknown.returncode != 0 and "Traceback" not in unknown.stderr


def test_dump_socket_is_root_only(tmp_path: Path) -> None:
    python = by_label("sid-3.14")
    # a socket directory that other users could reach but for its own mode
    public = Path(tempfile.mkdtemp(prefix="aiobpf-test-", dir="/tmp"))
    public.chmod(0o755)
    with (run_target(python, "seed_app.py") as target,
          run_daemon(tmp_path, socket_dir=public / "run") as daemon):
        daemon.wait_traced(target.pid)
        assert daemon.socket.stat().st_mode & 0o777 == 0o600
        assert daemon.socket.parent.stat().st_mode & 0o777 == 0o700
        # nobody cannot reach the socket: the CLI falls back to its own read, refused
        denied = aiobpf("ps", str(target.pid), user="nobody", socket=str(daemon.socket))
        assert denied.returncode == 77, denied.stderr
        # even with the file opened up, the daemon checks who asks
        daemon.socket.parent.chmod(0o755)
        daemon.socket.chmod(0o666)
        asked = aiobpf("ps", str(target.pid), user="nobody", socket=str(daemon.socket))
        assert asked.returncode == 77
        assert "root only" in asked.stderr
        assert "Task" not in asked.stdout
    shutil.rmtree(public)


# -- acceptance 4: cardinality -----------------------------------------------------------------
def test_series_per_process_capped(tmp_path: Path, prometheus_for) -> None:
    python = by_label("sid-3.14")
    with (run_target(python, "many_sites.py", "100000", "10000") as target,
          run_daemon(tmp_path) as daemon):
        daemon.wait_traced(target.pid, timeout=30)
        prom = prometheus_for(daemon)
        sel = f'pid="{target.pid}"'
        prom.wait_for(f"aiobpf_tasks_pending{{{sel}}}", lambda v: v == 100001, timeout=60)
        count = prom.value(f"count({{{sel}}})")
        sites = prom.value(f"count(aiobpf_suspended_tasks{{{sel}}})")
        print(f"series for a process with 100k task names and 10k sites: {count:.0f} "
              f"(cap {series_cap(TOP_SITES)})")
        assert sites == TOP_SITES + 1                  # top K and (other)
        assert count <= series_cap(TOP_SITES)
        other = prom.value(f'aiobpf_suspended_tasks{{{sel},site="(other)"}}')
        top = prom.value(f'sum(aiobpf_suspended_tasks{{{sel},site!="(other)"}})')
        assert other + top == 100001                   # every suspended task: workers, main
        rss = daemon.rss_mb()
        print(f"daemon RSS tracing a 100k-task process: {rss:.0f} MB")
        assert rss < 300


# -- acceptance 7: faults ----------------------------------------------------------------------
def test_target_killed_mid_scrape_and_exec(tmp_path: Path) -> None:
    python = by_label("sid-3.14")
    with (run_target(python, "alternating.py", "50", "0") as busy,
          run_target(python, "exec_into.py") as execer,
          run_daemon(tmp_path, refresh=0.2) as daemon):
        daemon.wait_traced(busy.pid)
        daemon.wait_traced(execer.pid)
        stop = threading.Event()
        failures: list[str] = []

        def scrape_forever() -> None:
            while not stop.is_set():
                try:
                    daemon.scrape()
                except OSError as exc:
                    failures.append(str(exc))

        # Four scrapers and this thread's own scrapes: within the endpoint's 8 per address.
        scrapers = [threading.Thread(target=scrape_forever, daemon=True) for _ in range(4)]
        for s in scrapers:
            s.start()
        try:
            time.sleep(1)
            busy.proc.send_signal(signal.SIGKILL)
            busy.proc.wait()
            execer.proc.send_signal(signal.SIGUSR1)   # becomes /bin/sleep, same PID
            time.sleep(0.5)
            assert execer.proc.poll() is None
            daemon.wait_untraced(busy.pid)
            daemon.wait_untraced(execer.pid)
        finally:   # the scrapers stop whatever failed
            stop.set()
            for s in scrapers:
                s.join()
        assert not failures
        assert daemon.proc.poll() is None
        assert daemon_uprobes(daemon.proc.pid) == set()   # no traced process: no probes


def test_daemon_restart_leaves_nothing(tmp_path: Path) -> None:
    python = by_label("sid-3.14")
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    with run_target(python, "alternating.py", "4", "0.001") as target:
        with run_daemon(workdir) as first:
            first.wait_traced(target.pid)
            old = first.proc.pid
            programs = program_ids(old)
            assert daemon_uprobes(old) and programs
            os.killpg(old, signal.SIGKILL)
            first.proc.wait()
        # the kernel dropped the killed daemon's programs, and the probes and hooks that
        # ran them, with its descriptors: no process holds them, none is loaded
        out = json.loads(subprocess.run(["bpftool", "perf", "list", "--json"],
                                        capture_output=True, text=True, check=True).stdout)
        assert [e for e in out if e.get("prog_id") in programs] == []
        assert _programs_unloaded(programs, timeout=5.0)   # (freed after an RCU grace period)
        with run_daemon(workdir) as second:   # same socket path: the stale one goes
            second.wait_traced(target.pid)
            assert aiobpf("ps", str(target.pid), socket=str(second.socket)).returncode == 0
        assert target.proc.poll() is None


def _programs_unloaded(ids: set[int], timeout: float) -> bool:
    """Whether none of the BPF programs ``ids`` is loaded in the kernel, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        loaded = json.loads(subprocess.run(["bpftool", "prog", "show", "--json"],
                                           capture_output=True, text=True, check=True).stdout)
        if not {p["id"] for p in loaded} & ids:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def test_scrape_storm_is_bounded(tmp_path: Path) -> None:
    python = by_label("sid-3.14")
    with run_target(python, "depth.py", "200", "3") as target, run_daemon(tmp_path) as daemon:
        daemon.wait_traced(target.pid)
        before = daemon.rss_mb()
        results: list[bool] = []

        def scrape() -> None:
            try:
                results.append("aiobpf_tasks_pending" in daemon.scrape(timeout=30))
            except OSError:
                results.append(False)

        threads = [threading.Thread(target=scrape) for _ in range(300)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = daemon.rss_mb()
        print(f"300 concurrent scrapes: {sum(results)} answered; RSS {before:.0f} -> "
              f"{after:.0f} MB")
        assert sum(results) >= 290
        assert after - before < 50
        assert daemon.proc.poll() is None
        assert daemon.series("aiobpf_tasks_pending", target.pid)


# -- errors a user can act on ---------------------------------------------------------------
def test_daemon_and_exporter_errors(tmp_path: Path) -> None:
    gone = aiobpf("exporter", "--pid", "4999999")
    assert gone.returncode == 1 and "no process with PID 4999999" in gone.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nbudget = 5\n")
    config = aiobpf("daemon", "--config", str(bad))
    assert config.returncode == 1 and "budget" in config.stderr
    assert "deploy/aiobpf.toml" in config.stderr
    nobody = aiobpf("daemon", user="nobody")
    assert nobody.returncode == 77 and "needs root" in nobody.stderr
    for result in (gone, config, nobody):
        assert "Traceback" not in result.stderr
    helped = aiobpf("daemon", "--help")
    assert "deploy/aiobpf.toml" in helped.stdout and "examples:" in helped.stdout


def test_exporter_says_why_a_pid_is_not_traced(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    port = free_port()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "aiobpf", "exporter", "--pid",
                                 str(sleeper.pid), "--listen", f"127.0.0.1:{port}"],
                                cwd=REPO, stderr=subprocess.PIPE, text=True)
        said = _first_line_with(proc, f"pid {sleeper.pid}: not traced", timeout=30)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode == 0, err
    assert said is not None and "Traceback" not in err


def _first_line_with(proc: subprocess.Popen, text: str, timeout: float) -> str | None:
    """The first line of ``proc``'s stderr that contains ``text``, read as it comes
    (None: the process ended or ``timeout`` passed first)."""
    assert proc.stderr is not None
    found: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if text in line:
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return found[0] if found else None


def test_verbose_logs_say_changes_not_every_tick(tmp_path: Path) -> None:
    """-vv logs a process's cost estimate when it changes: an idle process, measured
    every second, is said once or twice, not every second."""
    python = by_label("sid-3.14")
    with (run_target(python, "depth.py", "3", "2") as idle,
          run_daemon(tmp_path, verbose=2) as daemon):
        daemon.wait_traced(idle.pid)
        time.sleep(8)
        said = [line for line in daemon.log.read_text().splitlines()
                if line.startswith(f"aiobpf: pid {idle.pid}: ") and "steps/s" in line]
        assert 1 <= len(said) <= 2, said

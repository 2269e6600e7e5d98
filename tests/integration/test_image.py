"""The container image, built and run for real: the fleet deployment end to end.

The image is built by scripts/image.sh (what `make image` runs; cached by a hash of
its inputs).  The daemon runs in it as deploy/kubernetes/daemonset.yaml runs it: the
flags come from the manifest (host PID namespace, ``--cap-drop ALL`` and its
capabilities, its security profiles, memory limit, environment and volumes), the
configuration from its ConfigMap, with one change: the targets to select.  Two
substitutions keep the test off the host's own: the hostPath /run/aiobpf is a
directory of the test's, and the metrics port is published on a free loopback port.

Targets run in two containers (the image's bookworm python3.11, sid's python3.14 on
the sid root) and on the host.  A real Prometheus scrapes the containerised daemon;
`aiobpf pstree` on the host asks it through the shared socket.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiobpf.daemon import dumps
from tests.conftest import TARGETS, aiobpf, run_target
from tests.integration.containers import (
    Container,
    Image,
    Pod,
    build_image,
    configmap_toml,
    daemonset_run,
    manifest_capabilities,
    pod,
    podman,
    programs_loaded,
    wait_ready,
    wait_scrape,
)
from tests.integration.daemon_proc import REPO, daemon_uprobes, program_ids
from tests.integration.prom import Prometheus, free_port
from tests.pythons import SID_ROOT, by_label

APP = "fleet_app.py"
IN_CONTAINER = f"/home/user/{APP}"
# The daemon traces these targets only, never other Pythons of the machine.
SELECT = r"/fleet_app\.py\b"


@pytest.fixture(scope="module")
def image() -> Image:
    built = build_image()
    print(f"\n{built.said}\nscripts/image.sh build: {built.seconds:.1f} s")
    return built


def config_dir(tmp: Path) -> Path:
    """The ConfigMap's aiobpf.toml, selecting this test's targets only."""
    text, count = re.subn(r"(?m)^cmdline = \[\]$",
                          lambda _: f"cmdline = [{json.dumps(SELECT)}]", configmap_toml())
    assert count == 1, "the ConfigMap's [select] cmdline is not the empty list"
    directory = tmp / "config"
    directory.mkdir()
    (directory / "aiobpf.toml").write_text(text)
    return directory


def public_dir() -> Path:
    """A directory any user can reach (so that refusals come from the socket's own
    mode and the daemon's check, not from the way there)."""
    path = Path(tempfile.mkdtemp(prefix="aiobpf-image-", dir="/tmp"))
    path.chmod(0o755)
    return path


@dataclass
class Targets:
    bookworm: Container         # the image's Debian python3.11
    sid: Container              # sid's python3.14, on the sid root
    host: int                   # Debian's python3.11 on the host

    def pids(self) -> dict[int, str]:
        """pid -> the container label aiobpf must give it ("" on the host)."""
        return {self.bookworm.pid: self.bookworm.short_id, self.sid.pid: self.sid.short_id,
                self.host: ""}


MOUNT_APP = ["--network=none", "--volume", f"{TARGETS / APP}:{IN_CONTAINER}:ro"]


def sid_container(containers: Pod) -> Container:
    """fleet_app.py under sid's python3.14, the sid root as the container's root (--rootfs
    DIR:O: its writes kept in an overlay)."""
    assert (SID_ROOT / "usr/bin/python3.14").exists(), "no sid root: scripts/provision.sh"
    return containers.run("py314", [*MOUNT_APP, "--rootfs"], f"{SID_ROOT}:O",
                          "/usr/bin/python3.14", "-u", IN_CONTAINER)


def target_containers(containers: Pod, image: str) -> tuple[Container, Container]:
    """fleet_app.py in a container of the image (Debian's python3.11) and in sid's."""
    bookworm = containers.run("py311", [*MOUNT_APP, "--entrypoint", "/usr/bin/python3.11"],
                              image, "-u", IN_CONTAINER)
    sid = sid_container(containers)
    for container in (bookworm, sid):
        wait_ready(containers, container.name)
    return bookworm, sid


def metric_lines(text: str, name: str, pid: int) -> list[str]:
    return [line for line in text.splitlines()
            if line.startswith(name) and f'pid="{pid}"' in line]


def wait_for_metrics(url: str, check, what: str, timeout: float = 60) -> str:
    """Scrape until ``check(text)`` holds; fails saying ``what`` with the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(url, timeout=15) as reply:
            text = reply.read().decode()
        if check(text):
            return text
        if time.monotonic() > deadline:
            kept = "\n".join(line for line in text.splitlines() if "pid=" in line)
            pytest.fail(f"{what} after {timeout} s:\n{kept[-4000:]}")
        time.sleep(1)


def probe_hits(text: str, pid: int) -> float:
    return sum(float(line.rsplit(" ", 1)[1])
               for line in metric_lines(text, "aiobpf_probe_hits_total", pid))


def label(line: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', line)
    assert found, line
    return found.group(1)


def cli_bytes(*args: str, socket: Path) -> subprocess.CompletedProcess[bytes]:
    """The aiobpf command line on the host, as root; its output as bytes."""
    return subprocess.run([sys.executable, "-m", "aiobpf", *args], capture_output=True,
                          timeout=120, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "AIOBPF_SOCKET": str(socket)})


def check_pstree(pid: int, sock: Path) -> None:
    """The daemon answers a dump of ``pid`` over the socket; the CLI prints it, byte
    for byte what a direct read on the host prints."""
    reply = dumps.request(sock, {"pid": pid, "format": "tree", "capture": "auto",
                                 "window": 0.3})
    assert reply is not None and "output" in reply and "fallback" not in reply, reply
    via = cli_bytes("pstree", str(pid), socket=sock)
    direct = cli_bytes("pstree", str(pid), "--no-daemon", socket=sock)
    assert via.returncode == direct.returncode == 0, (via.stderr, direct.stderr)
    assert b"did not answer" not in via.stderr, via.stderr
    assert via.stdout == direct.stdout == reply["output"].encode()
    assert b"leaf.1" in via.stdout


def check_refused(pid: int, sock: Path) -> None:
    """A user other than root gets nothing: not through the socket's mode, nor (with
    the socket opened up) from the daemon, which checks who asks."""
    # the hostPath directory is made as a kubelet makes it (0755): the socket's own mode
    assert sock.stat().st_mode & 0o777 == 0o600
    denied = aiobpf("pstree", str(pid), user="nobody", socket=str(sock))
    assert denied.returncode == 77 and "leaf" not in denied.stdout, denied.stderr
    sock.chmod(0o666)
    try:
        asked = aiobpf("pstree", str(pid), user="nobody", socket=str(sock))
        assert asked.returncode == 77 and "root only" in asked.stderr, asked.stderr
        assert "leaf" not in asked.stdout
    finally:
        sock.chmod(0o600)


@dataclass
class Deployment:
    containers: Pod
    daemon: Container
    url: str
    socket: Path
    grace: int


def deploy(containers: Pod, image: str, config: Path, run_dir: Path,
           capabilities: list[str] | None = None, role: str = "daemon") -> Deployment:
    """The daemon's container, as the DaemonSet runs it; returns once it serves metrics."""
    port = free_port()
    run = daemonset_run(config_dir=config, host_paths={"/run/aiobpf": run_dir},
                        port=port, capabilities=capabilities)
    daemon = containers.run(role, run.flags, image, *run.args)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_scrape(url, containers, daemon.name)
    return Deployment(containers, daemon, url, run_dir / "aiobpf.sock", run.grace)


@pytest.fixture
def public() -> Iterator[Path]:
    path = public_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_daemonset_in_a_container(tmp_path: Path, image: Image, public: Path) -> None:
    t0 = time.monotonic()
    with ExitStack() as stack:
        containers = stack.enter_context(pod("e2e"))
        host = stack.enter_context(run_target(by_label("debian-3.11"), APP))
        bookworm, sid = target_containers(containers, image.name)
        targets = Targets(bookworm, sid, host.pid)
        deployment = deploy(containers, image.name, config_dir(tmp_path),
                            public / "run-aiobpf")
        started = time.monotonic() - t0
        pids = targets.pids()

        # discovered, each labelled with its container, and captured with BPF
        def traced(text: str) -> bool:
            return all(metric_lines(text, "aiobpf_process_info", pid) for pid in pids)
        text = wait_for_metrics(deployment.url, traced, "not all targets traced")
        for pid, container in pids.items():
            (info,) = metric_lines(text, "aiobpf_process_info", pid)
            assert label(info, "container") == container, info
            assert label(info, "capture") != "memory", info

        def captured(text: str) -> bool:
            return all(probe_hits(text, pid) > 0 for pid in pids)
        wait_for_metrics(deployment.url, captured, "no BPF probe hits for every target")

        # a real Prometheus scrapes the containerised daemon: the three processes'
        # tasks (main, 2 branches, 4 leaves, the ticker), the depths of the suspended
        # ones, their step durations
        prom = stack.enter_context(prometheus(tmp_path, deployment.url))
        selector = "|".join(str(pid) for pid in pids)
        for expr in (f'aiobpf_tasks_pending{{pid=~"{selector}"}} == 8',
                     f'sum by (pid) (aiobpf_task_stack_depth_bucket{{pid=~"{selector}"}})',
                     f'sum by (pid) (aiobpf_task_await_depth_bucket{{pid=~"{selector}"}})',
                     f'aiobpf_task_step_duration_seconds_count{{pid=~"{selector}"}} > 0',
                     f'aiobpf_task_wakeup_delay_seconds_count{{pid=~"{selector}"}} > 0'):
            wait_for_pids(prom, expr, set(pids))

        # dumps on the host, through the socket the container shares
        for pid in pids:
            check_pstree(pid, deployment.socket)
        check_refused(host.pid, deployment.socket)
        check_compiled_without_compiler(deployment.daemon.name)

        # stopped as Kubernetes stops it: SIGTERM, a forced kill after the grace period
        stopped = stop_and_check(deployment)
        print(f"\nstarted in {started:.1f} s; stopped by SIGTERM in {stopped:.1f} s; "
              f"test {time.monotonic() - t0:.1f} s")


def check_compiled_without_compiler(name: str) -> None:
    """The image runs aiobpf's compiled loops, and holds no compiler (the build step
    removed what it needed)."""
    doctor = podman("exec", name, "/opt/aiobpf/.venv/bin/aiobpf", "doctor", "--json",
                    check=False)
    check = next(c for c in json.loads(doctor.stdout) if c["name"] == "compiled loops")
    assert check["status"] == "ok", check
    found = podman("exec", name, "sh", "-c", "command -v gcc cc || ls /usr/include/python3*",
                   check=False)
    assert found.returncode != 0, found.stdout


@contextmanager
def prometheus(tmp: Path, url: str) -> Iterator[Prometheus]:
    """A Prometheus scraping the daemon at ``url``."""
    server = Prometheus(tmp, [url.split("/")[2]])
    try:
        yield server
    finally:
        server.close()


def wait_for_pids(prom: Prometheus, expr: str, pids: set[int], timeout: float = 60) -> None:
    """Until ``expr`` returns a series for each of ``pids`` (and no other)."""
    deadline = time.monotonic() + timeout
    while (found := {int(r["metric"]["pid"]) for r in prom.query(expr)}) != pids:
        if time.monotonic() > deadline:
            pytest.fail(f"{expr}: pids {sorted(found)}, not {sorted(pids)}")
        time.sleep(0.5)


def wait_for_uprobes(pid: int, timeout: float = 30) -> None:
    """Until the kernel lists uprobes of ``pid`` (windowed capture attaches them now and
    then), so that their absence after the stop means something."""
    deadline = time.monotonic() + timeout
    while not daemon_uprobes(pid):
        if time.monotonic() > deadline:
            pytest.fail(f"no uprobes of the daemon (pid {pid}) in {timeout} s")
        time.sleep(0.2)


def stop_and_check(deployment: Deployment) -> float:
    """``podman stop`` (SIGTERM, then SIGKILL after the manifest's grace period): the
    daemon exits by itself, cleanly, and the kernel lists no probe or program of it."""
    pid, name = deployment.daemon.pid, deployment.daemon.name
    programs = program_ids(pid)
    assert programs and programs_loaded(programs) == programs
    wait_for_uprobes(pid)
    t0 = time.monotonic()
    podman("stop", "-t", str(deployment.grace), name, timeout=deployment.grace + 60)
    took = time.monotonic() - t0
    state = deployment.containers.state(name)
    log = deployment.containers.logs(name)
    assert state["ExitCode"] == 0 and took < deployment.grace, (state, took, log)
    assert "Traceback" not in log, log
    assert not daemon_uprobes(pid), "uprobes left after the stop"
    assert not programs_loaded(programs), "BPF programs left after the stop"
    return took


# -- the capability list, proven minimal ----------------------------------------------------
def says_missing(log: str, capability: str) -> list[str]:
    """The daemon's own lines that name ``capability`` as what it lacks."""
    return [line for line in log.splitlines()
            if line.startswith("aiobpf:") and f"CAP_{capability}" in line]


@pytest.mark.parametrize("missing", [None, *manifest_capabilities()],
                         ids=lambda cap: f"without-{cap}" if cap else "all")
def test_each_capability_is_needed(tmp_path: Path, image: Image, public: Path,
                                   missing: str | None) -> None:
    """The manifest's capabilities less one, for each: the daemon runs on, says in one
    line which capability it lacks, and does less (no BPF capture of the target, or no
    read of it at all).  With all of them it captures, and a forced kill (SIGKILL, as
    after the grace period) leaves no uprobe or program."""
    capabilities = [cap for cap in manifest_capabilities() if cap != missing]
    with pod(f"caps-{missing or 'all'}".lower()) as containers:
        target = sid_container(containers)
        wait_ready(containers, target.name)
        deployment = deploy(containers, image.name, config_dir(tmp_path),
                            public / "run-aiobpf", capabilities=capabilities)
        name, pid = deployment.daemon.name, deployment.daemon.pid
        if missing is None:
            wait_for_metrics(deployment.url, lambda text: probe_hits(text, target.pid) > 0,
                             "no BPF probe hits with every capability")
            assert not [line for line in containers.logs(name).splitlines()
                        if "CAP_" in line], containers.logs(name)
            programs = program_ids(pid)
            assert programs
            wait_for_uprobes(pid)
            podman("kill", "--signal", "KILL", name)
            podman("wait", name, timeout=60)
            assert not daemon_uprobes(pid), "uprobes left after a forced kill"
            assert not programs_loaded(programs), "BPF programs left after a forced kill"
            return
        t0 = time.monotonic()
        while not says_missing(containers.logs(name), missing):
            if time.monotonic() - t0 > 30:
                pytest.fail(f"without {missing} the daemon does not say so:\n"
                            f"{containers.logs(name)}")
            time.sleep(0.5)
        time.sleep(max(0.0, 8 - (time.monotonic() - t0)))   # several scans, a refresh
        with urllib.request.urlopen(deployment.url, timeout=15) as reply:
            text = reply.read().decode()
        (line,) = says_missing(containers.logs(name), missing)
        assert probe_hits(text, target.pid) == 0
        info = metric_lines(text, "aiobpf_process_info", target.pid)
        assert not info or label(info[0], "capture") == "memory", info
        print(f"\nwithout {missing}: {'not read' if not info else 'memory reads only'}; "
              f"{line}")

"""Shared test machinery: run target programs under every interpreter, run aiobpf.

Targets print ``READY`` on stdout once their tasks are set up (a handshake, not
a sleep).  Every process a test starts is killed when the test ends, pass or
fail, and again at session end if anything survived.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import pytest

from tests.pythons import SID_ROOT, THIRD_PARTY, Python, all_pythons

TARGETS = Path(__file__).parent / "targets"
SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "aiobpf" / "exporters"
                     / "snapshot.schema.json").read_text())
IN_ROOT_DIR = "/home/user"            # where targets live as the target sees them
READY_TIMEOUT = 30.0
_started: list[subprocess.Popen] = []
_used: dict[str, str] = {}           # label -> version string, for the summary
_cleanup: list[Path] = []            # directories to remove at session end


@dataclass
class RunningTarget:
    python: Python
    proc: subprocess.Popen
    script: str                      # path as the target sees it
    ready_line: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid


def _install(python: Python, source: Path, name: str | None = None) -> str:
    """Make ``source`` visible to ``python``; return its path as the target sees it."""
    name = name or source.name
    if python.root is None:
        return str(source)
    dest_dir = Path(f"{python.root}{IN_ROOT_DIR}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, dest_dir / name)
    return f"{IN_ROOT_DIR}/{name}"


def require(python: Python) -> None:
    if not python.available():
        if python.required:
            pytest.fail(f"{python.label} ({python.host_executable}) is missing: provisioning "
                        "installs it (scripts/provision.sh)")
        pytest.skip(f"{python.label} is not on this machine")


def require_modules(python: Python, *modules: str) -> None:
    """Fail (never skip) unless ``python`` imports ``modules``, third-party packages that
    provisioning installs for it (``THIRD_PARTY``)."""
    require(python)
    missing = [m for m in modules if m not in THIRD_PARTY.get(python.label, ())]
    assert not missing, f"{python.label} is not provisioned with {missing}: see THIRD_PARTY"
    out = subprocess.run(python.argv("-c", f"import {', '.join(modules)}"),
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        pytest.fail(f"{python.label} cannot import {', '.join(modules)} ({last}): "
                    "provisioning installs them (scripts/provision.sh)", pytrace=False)


@contextmanager
def run_target(python: Python, script: str | Path, *args: str, name: str | None = None,
               env: dict[str, str] | None = None, user: str | None = None,
               stdin: bool = False) -> Iterator[RunningTarget]:
    """Start ``tests/targets/<script>`` under ``python`` and wait for its READY line
    (``stdin``: with a pipe to its standard input, ``.proc.stdin``)."""
    require(python)
    source = TARGETS / script if isinstance(script, str) else script
    path = _install(python, source, name)
    argv = python.argv("-u", path, *args)
    if user is not None:
        argv = _as_user(user, argv)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    _started.append(proc)
    target = RunningTarget(python, proc, path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            if line.startswith("READY"):
                target.ready_line = line.strip()
                break
            if not line or time.monotonic() > deadline:
                proc.kill()
                err = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"{python.label} {script} did not get ready: {err[-2000:]}")
        note_used(python)
        yield target
    finally:
        stop(proc)


def _as_user(user: str, argv: list[str]) -> list[str]:
    """``argv`` run as ``user``; a command that enters a chroot (``Python.argv``) drops to
    the user after the chroot, which only root may enter."""
    entry = pwd.getpwnam(user)
    if argv[:1] == ["chroot"]:
        return ["chroot", f"--userspec={entry.pw_uid}:{entry.pw_gid}", "--groups=", *argv[1:]]
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
            *argv]


_readable: dict[str, Path] = {}


def readable_package(user: str) -> Path:
    """A directory holding a copy of the aiobpf package that ``user`` can import (the
    checkout may be private to root); fails the test, saying why, when ``user`` cannot
    run this venv's interpreter and import aiobpf's dependencies."""
    if user in _readable:
        return _readable[user]
    copy = Path(tempfile.mkdtemp(prefix="aiobpf-readable-"))
    _cleanup.append(copy)
    shutil.copytree(Path(__file__).resolve().parent.parent / "aiobpf", copy / "aiobpf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in [copy, *copy.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    probe = subprocess.run(
        _as_user(user, [sys.executable, "-c", "import aiobpf.cli, psutil, elftools"]),
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(copy), "HOME": "/tmp"})
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.fail(f"{user} cannot run {sys.executable} with aiobpf's dependencies "
                    f"({last}): the checkout and its venv must be readable by other users "
                    "(clone into a directory with mode 0755)", pytrace=False)
    _readable[user] = copy
    return copy


def note_used(python: Python) -> None:
    """Record that a test ran a target under ``python`` (for the matrix summary)."""
    _used.setdefault(python.label, _version_of(python))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _version_of(python: Python) -> str:
    try:
        out = subprocess.run(python.argv("-c", "import sys; print(sys.version.split()[0])"),
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        """The JSON document printed, validated against aiobpf's published schema."""
        doc = json.loads(self.stdout)
        jsonschema.validate(doc, SCHEMA)
        return doc


NO_DAEMON_SOCKET = "/nonexistent/aiobpf.sock"


def aiobpf(*args: str, user: str | None = None, timeout: float = 120,
           socket: str = NO_DAEMON_SOCKET, env: dict[str, str] | None = None) -> Result:
    """Run the aiobpf command line as a separate process, as a user would.  ps and
    pstree ask the daemon at ``socket`` first (by default: none, so tests that do not
    test the daemon never meet one the machine may run).  ``env``: more variables."""
    argv = [sys.executable, "-m", "aiobpf", *args]
    package = Path(__file__).resolve().parent.parent
    if user is not None:
        argv = _as_user(user, argv)
        package = readable_package(user)
    environ = {**os.environ, "PYTHONPATH": str(package), "AIOBPF_SOCKET": socket, **(env or {})}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=environ)
    return Result(out.returncode, out.stdout, out.stderr)


def matrix_params(min_minor: tuple[int, int] = (3, 11)) -> list:
    return [pytest.param(p, id=p.label) for p in all_pythons() if p.minor >= min_minor]


@pytest.fixture(scope="session")
def sid_proc() -> Iterator[None]:
    """/proc inside the sid root, so that sid's own ``python3.X -m asyncio`` can run there."""
    proc_dir = SID_ROOT / "proc"
    mounted = False
    if SID_ROOT.is_dir() and not os.path.ismount(proc_dir):
        subprocess.run(["mount", "-t", "proc", "proc", str(proc_dir)], check=True)
        mounted = True
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(proc_dir)], check=False)


# Tests in these folders start real interpreters, BPF, daemons: ``-m "not integration"``
# leaves the unit tests, which run in seconds (``-m "not integration and not fuzz"``).
INTEGRATION_DIRS = ("integration", "adversarial")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under ``INTEGRATION_DIRS`` ``integration``."""
    tests = Path(__file__).resolve().parent
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(tests).parts
        if parts and parts[0] in INTEGRATION_DIRS:
            item.add_marker(pytest.mark.integration)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for proc in _started:
        stop(proc)
    for directory in _cleanup:
        shutil.rmtree(directory, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config) -> None:
    tr = terminalreporter
    tr.section("interpreter matrix covered")
    for python in all_pythons():
        if python.label in _used:
            state = f"covered ({_used[python.label]})"
        elif not python.available():
            state = "MISSING (required)" if python.required else "not on this machine"
        else:
            state = "available, not used by the selected tests"
        tr.write_line(f"{python.label:<16} {state}")

"""Every error a user can meet: its exit status, and one or two lines that say what to do.

Each test runs the real command line (as root, or as ``nobody`` where the
unprivileged path matters) against real processes; no traceback may appear.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from aiobpf import errors
from aiobpf.cli import common
from aiobpf.collector import target as target_mod
from tests.conftest import (
    NO_DAEMON_SOCKET,
    TARGETS,
    Result,
    aiobpf,
    matrix_params,
    readable_package,
    run_target,
    stop,
)
from tests.integration.prom import free_port
from tests.pythons import Python, by_label, unsupported_pythons

REPO = Path(__file__).resolve().parents[2]


def _one_error(result: Result, status: int, *needles: str) -> None:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("aiobpf: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.fixture(scope="module")
def readable_copy() -> Path:
    """The package where ``nobody`` can read it (the checkout may not be)."""
    return readable_package("nobody")


def _as_nobody(readable_copy: Path, *args: str, caps: str = "") -> Result:
    """``aiobpf ARGS`` as ``nobody``, with the ambient capabilities ``caps`` (setpriv's
    syntax, e.g. ``+sys_ptrace``)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(readable_copy), "HOME": "/tmp",
           "AIOBPF_SOCKET": NO_DAEMON_SOCKET}
    keep = [f"--inh-caps={caps}", f"--ambient-caps={caps}"] if caps else []
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *keep,
            sys.executable, "-m", "aiobpf", *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    return Result(out.returncode, out.stdout, out.stderr)


def test_pid_does_not_exist() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    result = aiobpf("pstree", str(gone.pid))
    _one_error(result, errors.EXIT_ERROR, f"no process with PID {gone.pid}", "check the PID")


def test_process_exits_during_the_read(monkeypatch) -> None:
    """Discovery succeeds, then the target dies before its tasks are read."""
    python = by_label("sid-3.14")
    with run_target(python, "seed_app.py") as target:
        real_open = target_mod.open_target

        def open_then_kill(pid: int, **kwargs):
            found = real_open(pid, **kwargs)
            stop(target.proc)
            return found

        monkeypatch.setattr(common, "open_target", open_then_kill)
        args = common.argparse.Namespace(pid=target.pid, no_dwarf=False, debug_dir=[])
        with pytest.raises(errors.ProcessExitedError) as raised:
            common.take_snapshot(args)
        assert f"process {target.pid} exited while aiobpf was reading it" in raised.value.render()


def test_not_a_python_process() -> None:
    proc = subprocess.Popen(["sleep", "600"])
    try:
        result = aiobpf("ps", str(proc.pid))
        _one_error(result, errors.EXIT_UNSUPPORTED, "runs no CPython interpreter",
                   "CPython 3.11-3.15")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("python", matrix_params())
def test_python_without_asyncio(python: Python) -> None:
    with run_target(python, "no_asyncio.py") as target:
        result = aiobpf("pstree", str(target.pid))
        _one_error(result, errors.EXIT_NOTHING, "asyncio", f"Python {python.minor[0]}.")


@pytest.mark.parametrize("python", matrix_params())
def test_python_with_asyncio_but_no_tasks(python: Python) -> None:
    with run_target(python, "no_tasks.py") as target:
        result = aiobpf("ps", str(target.pid))
        assert result.returncode == errors.EXIT_NOTHING, result.stderr
        assert "Traceback" not in result.stderr
        assert "asyncio" in result.stderr


@pytest.mark.parametrize("python", [pytest.param(p, id=p.label) for p in unsupported_pythons()])
def test_unsupported_version_is_named(python: Python) -> None:
    with run_target(python, "no_asyncio.py") as target:
        result = aiobpf("pstree", str(target.pid))
        version = f"{python.minor[0]}.{python.minor[1]}"
        _one_error(result, errors.EXIT_UNSUPPORTED, f"Python {version}", "is not supported",
                   "3.11 to 3.15")


def test_a_user_without_ptrace_rights_is_told_to_run_as_root(readable_copy: Path) -> None:
    with run_target(by_label("sid-3.14"), "seed_app.py") as target:
        result = _as_nobody(readable_copy, "pstree", str(target.pid))
        _one_error(result, errors.EXIT_PERMISSION, f"PID {target.pid}", "CAP_SYS_PTRACE",
                   "run it as root")


def test_memory_reads_refused_for_a_non_dumpable_process(readable_copy: Path) -> None:
    """Same user, but the target made itself non-dumpable: the kernel refuses the read."""
    with run_target(by_label("debian-3.11"), _world_readable("undumpable.py"),
                    user="nobody") as target:
        result = _as_nobody(readable_copy, "ps", str(target.pid))
        _one_error(result, errors.EXIT_PERMISSION, "not allowed to read its memory",
                   "not dumpable", "CAP_SYS_PTRACE")


def test_daemon_and_exporter_without_root_exit_77(readable_copy: Path) -> None:
    """Permission errors exit 77 from every command, the daemon's too."""
    for args in (("daemon",), ("exporter", "--pid", str(os.getpid()))):
        result = _as_nobody(readable_copy, *args)
        _one_error(result, errors.EXIT_PERMISSION, f"aiobpf {args[0]} needs root", "sudo")


def test_daemon_refused_its_socket_directory_exits_77(readable_copy: Path,
                                                       tmp_path: Path) -> None:
    """Allowed to read memory (CAP_SYS_PTRACE), not to create its dump socket."""
    os.chmod(tmp_path, 0o700)   # root's: nobody may not create anything in it
    result = _as_nobody(readable_copy, "daemon", "--no-bpf", "--listen",
                        f"127.0.0.1:{free_port()}", "--socket",
                        str(tmp_path / "run" / "aiobpf.sock"), caps="+sys_ptrace")
    _one_error(result, errors.EXIT_PERMISSION, "cannot serve", "Permission denied",
               "run it as root")


def test_trace_without_bpf_privileges_exits_77(readable_copy: Path) -> None:
    """nobody may read its own process's memory, but not load BPF programs."""
    with run_target(by_label("debian-3.11"), _world_readable("seed_app.py"),
                    user="nobody") as target:
        result = _as_nobody(readable_copy, "trace", str(target.pid), "--duration", "1")
        _one_error(result, errors.EXIT_PERMISSION, "cannot trace", "CAP_BPF",
                   "run it as root")


def _world_readable(name: str) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="aiobpf-target-"))
    os.chmod(tmp, 0o755)
    dest = tmp / name
    shutil.copy(TARGETS / name, dest)
    os.chmod(dest, 0o644)
    return dest


def test_usage_errors_exit_2() -> None:
    for args in (("ps", "notapid"), ("pstree",), ("ps", "-3"), ("frobnicate",)):
        result = aiobpf(*args)
        assert result.returncode == errors.EXIT_USAGE, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_help_teaches() -> None:
    top = aiobpf("--help")
    assert top.returncode == 0
    for needle in ("pstree", "ps", "doctor", "exit status", "77 permission", "CAP_SYS_PTRACE"):
        assert needle in top.stdout
    for command in ("ps", "pstree", "doctor", "trace", "exporter", "daemon"):
        result = aiobpf(command, "--help")
        assert result.returncode == 0 and len(result.stdout.splitlines()) > 5


def test_doctor_as_root() -> None:
    result = aiobpf("doctor")
    assert result.returncode == 0, result.stdout
    names = ("kernel", "memory reads", "ptrace scope", "lockdown", "BPF privileges",
             "bpf() system call", "uprobes", "BTF", "bcc", "kernel headers", "compiled loops",
             "daemon")
    for name in names:
        assert name in result.stdout
    checks = json.loads(aiobpf("doctor", "--json").stdout)
    assert {c["name"] for c in checks} == set(names)
    assert all(c["status"] == "ok" for c in checks), checks


def test_doctor_as_nobody_names_the_missing_capabilities(readable_copy: Path) -> None:
    result = _as_nobody(readable_copy, "doctor")
    assert result.returncode == errors.EXIT_ERROR
    assert "CAP_SYS_PTRACE" in result.stdout and "CAP_BPF" in result.stdout
    assert "Traceback" not in result.stderr

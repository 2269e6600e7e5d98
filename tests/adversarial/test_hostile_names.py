"""Names a process chooses for itself, its tasks and its code, made to break what shows
them: the metrics endpoint (a label that is not UTF-8 made every scrape of the host fail),
the daemon's log, and root's terminal (``aiobpf ps/pstree``).

The targets (``tests/targets/hostile_names.py``) run as the hostile user: one names
itself through a 10 kB argv[0] (``exec -a``) and its comm, with ANSI escapes, a newline,
a ``\\xff`` byte, quotes, braces and backslashes; the other sets only a short comm
with such bytes (its /proc/PID/status is not UTF-8).  Both name their tasks, and the
qualname and file name of the coroutine their tasks wait in, with terminal escapes,
newlines and lone surrogates.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiobpf.collector.tasks import MAX_TASK_NAME
from tests.adversarial.conftest import User, assert_healthy, stop_in_time
from tests.conftest import RunningTarget, run_target
from tests.integration.daemon_proc import DaemonProcess, run_daemon
from tests.integration.prom import Prometheus
from tests.pythons import by_label

pytestmark = pytest.mark.integration

SELECT = r"(depth|hostile_names)\.py"
NAME_MAX, SITE_MAX = 128, 256
TASK_NAMES = ["\x1b[2J\nfake line", 'quote"brace}back\\slash', "surrogate\udcff",
              "bidi\u202eevil", "long" + "x" * 10_000 + "\x1b[31m"]
# Terminal-safe bytes: printable UTF-8 text; the only control byte is the newline.
_RAW_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]")
REPO = Path(__file__).resolve().parents[2]


@contextmanager
def hostile_targets(user: User, modes: tuple[str, ...] = ("argv0", "comm")
                    ) -> Iterator[list[RunningTarget]]:
    """The hostile targets, as ``user``: "argv0" (argv[0] + comm), "comm" (comm only)."""
    python = by_label("sid-3.14")
    with ExitStack() as stack:
        yield [stack.enter_context(run_target(python, "hostile_names.py", mode, user=user.name))
               for mode in modes]


def scrape_status(daemon: DaemonProcess) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(daemon.url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_listed(daemon: DaemonProcess, pid: int, timeout: float = 15.0) -> None:
    """Until ``pid`` is traced; fails with the last scrape's status (a 500 before the fix)."""
    import time

    deadline = time.monotonic() + timeout
    status, body = 0, b""
    while time.monotonic() < deadline:
        status, body = scrape_status(daemon)
        if status == 200 and f'pid="{pid}"'.encode() in body:
            return
        time.sleep(0.3)
    pytest.fail(f"pid {pid} not in the metrics after {timeout} s; last scrape: HTTP {status}"
                f"\n{body[-500:]!r}\n{daemon.log.read_text(errors='replace')[-3000:]}")


def run_cli(*args: str, socket: str = "/nonexistent/aiobpf.sock") -> subprocess.CompletedProcess:
    """``aiobpf ARGS`` as root, its output kept as bytes (as a terminal would get it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "AIOBPF_SOCKET": socket}
    return subprocess.run([sys.executable, "-m", "aiobpf", *args], capture_output=True,
                          timeout=120, env=env, cwd=REPO)


def assert_terminal_safe(out: bytes, what: str) -> str:
    """``out`` is UTF-8 without a control character but its own newlines."""
    raw = _RAW_CONTROL.search(out)
    assert raw is None, f"{what}: raw control character {raw.group()!r} in {out[:2000]!r}"
    return out.decode("utf-8")   # strict: fails on bytes that are not UTF-8


def per_process_labels(exposition: str, pids: list[int]) -> list[dict[str, str]]:
    """The label sets of every sample of ``pids`` (the exposition must parse)."""
    found = []
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.labels.get("pid") in {str(p) for p in pids}:
                found.append(sample.labels)
    return found


def test_hostile_process_and_code_names_leave_every_scrape_valid(tmp_path, hostile_user):
    """Every scrape answers 200 with an exposition that parses; each label a target sets
    (process, python, container, site) is printable and bounded; a real Prometheus scrapes
    it (target up, the hostile process's series stored); the log stays one line per event."""
    with run_daemon(tmp_path, select=SELECT) as daemon, \
            hostile_targets(hostile_user) as targets:
        pids = [t.pid for t in targets]
        for pid in pids:
            wait_listed(daemon, pid)
        for _ in range(3):
            status, body = scrape_status(daemon)
            assert status == 200, body[-500:]
            labels = per_process_labels(body.decode("utf-8"), pids)
        assert labels
        for sample in labels:
            for key, value in sample.items():
                limit = SITE_MAX if key == "site" else NAME_MAX
                assert value.isprintable(), (key, value)
                assert len(value) <= limit, (key, len(value))
        process = {s["pid"]: s["process"] for s in labels}
        long_name = process[str(pids[0])]
        assert long_name.startswith(r"\x1b[2J\nfake line!" + "\ufffd"
                                    + r'"}\\\x1b]0;pwned\x07n'), long_name
        assert long_name.endswith("…") and len(long_name) == NAME_MAX
        assert process[str(pids[1])] == "\ufffd" + r'\x1b[31m\n"}\\' + "\ufffd"
        sites = {s["site"] for s in labels if "site" in s}
        evil = [s for s in sites if s.startswith("evil")]
        assert evil and all(s.startswith(r'evil\n"}\\\x1b[31mqual' + "\ufffd" + r" /tmp/evil\n")
                            for s in evil), sites
        assert all(len(s) == SITE_MAX and s.endswith("…") for s in evil)

        (tmp_path / "prom").mkdir()
        prom = Prometheus(tmp_path / "prom", [f"127.0.0.1:{daemon.port}"])
        try:
            prom.wait_for('up{job="aiobpf"}', lambda v: v == 1.0)
            for pid in pids:
                prom.wait_for(f'count(aiobpf_process_info{{pid="{pid}"}})',
                              lambda v: v == 1.0)
        finally:
            prom.close()

        # the CLI on such a process, through the daemon and on its own
        for pid in pids:
            for socket in (str(daemon.socket), "/nonexistent/aiobpf.sock"):
                for command in ("pstree", "ps"):
                    out = run_cli(command, str(pid), socket=socket)
                    assert out.returncode == 0, (command, socket, out.stderr[-2000:])
                    assert_terminal_safe(out.stdout, f"{command} {pid}")

        log = daemon.log.read_bytes()
        assert_terminal_safe(log, "the daemon's log")
        assert not re.search(rb"^fake line", log, re.M), "a target forged a log line"
        assert_healthy(daemon)
        stop_in_time(daemon)


def test_task_and_code_names_reach_the_terminal_escaped(tmp_path, hostile_user):
    """ps, pstree and CSV print task names, qualnames and file names escaped (no raw
    control character, no forged line), through the daemon and without it; JSON gives
    back every name exactly (task names up to 1024 characters)."""
    with run_daemon(tmp_path, select=SELECT) as daemon, \
            hostile_targets(hostile_user) as targets:
        pid = targets[0].pid
        for socket in ("/nonexistent/aiobpf.sock", str(daemon.socket)):   # alone, then asked
            if socket == str(daemon.socket):
                daemon.wait_traced(pid, timeout=15)
            for args in (("pstree",), ("ps",), ("ps", "--format", "csv")):
                out = run_cli(*args, str(pid), socket=socket)
                assert out.returncode == 0, (args, out.stderr[-2000:])
                text = assert_terminal_safe(out.stdout, " ".join(args))
                assert "\\x1b[2J\\nfake line" in text, text[:3000]
                assert "quote\"brace}back\\\\slash" in text or "quote\"\"brace" in text
                assert "bidi\\u202eevil" in text
                assert "evil\\n\"}\\\\\\x1b[31mqual\ufffd" in text or "evil\\n\"\"}" in text
                assert not any(line.startswith("fake line") for line in text.splitlines())
            out = run_cli("ps", "--format", "json", str(pid), socket=socket)
            assert out.returncode == 0, out.stderr[-2000:]
            assert_terminal_safe(out.stdout, "ps --format json")
            document = json.loads(out.stdout)
            names = {t["name"] for t in document["tasks"]}
            exact = [n if len(n) <= MAX_TASK_NAME else n[:MAX_TASK_NAME] + "…"
                     for n in TASK_NAMES if "\udcff" not in n]   # long names are cut
            assert set(exact) <= names, names
            # a lone surrogate in a str of the target is read as U+FFFD
            assert "surrogate\ufffd" in names
            frames = {(f["name"], f["filename"]) for t in document["tasks"] for f in t["frames"]}
            assert ("evil\n\"}\\\x1b[31mqual\ufffd",
                    "/tmp/evil\n\"}\\\x1b[2J\ufffd" + "f" * 10_000 + ".py") in frames
        assert_healthy(daemon)
        stop_in_time(daemon)


def test_a_process_whose_status_is_not_utf8_is_traced_and_shown(tmp_path, hostile_user):
    """A comm with a \\xff byte (prctl) makes /proc/PID/status not UTF-8: the process is
    still traced by the daemon, and ps/pstree show it, alone and through the daemon."""
    with run_daemon(tmp_path, select=SELECT) as daemon, \
            hostile_targets(hostile_user, ("comm",)) as targets:
        pid = targets[0].pid
        for socket in ("/nonexistent/aiobpf.sock", str(daemon.socket)):
            if socket == str(daemon.socket):
                wait_listed(daemon, pid)
            for command in ("pstree", "ps"):
                out = run_cli(command, str(pid), socket=socket)
                assert out.returncode == 0, (command, socket, out.stderr[-2000:])
                assert "(T) bidi\\u202eevil" in assert_terminal_safe(out.stdout, command) \
                    or command == "ps"
        assert_healthy(daemon)
        stop_in_time(daemon)


CGROUP2 = Path("/sys/fs/cgroup/unified")   # hybrid hierarchy; /sys/fs/cgroup on pure v2
CRAFTED_CGROUP = b"\xff\x1b[2J" + b"ab" * 32   # not UTF-8, an escape, and 64 hex digits


def cgroup2_root() -> Path:
    for root in (Path("/sys/fs/cgroup"), CGROUP2):
        if (root / "cgroup.procs").exists() and (root / "cgroup.controllers").exists():
            return root
    pytest.fail("no cgroup2 hierarchy mounted (/sys/fs/cgroup or /sys/fs/cgroup/unified)")


def test_a_cgroup_name_that_is_not_utf8_stops_no_discovery(tmp_path, hostile_user):
    """A user with a delegated cgroup (as systemd gives user@.service) moves its process
    into a cgroup whose name is not UTF-8: the daemon still discovers every process (the
    host's scan must not fail on it) and traces that one with a printable container label."""
    delegated = cgroup2_root() / f"aiobpf-test-{os.getpid()}"
    delegated.mkdir()
    crafted = os.path.join(os.fsencode(delegated), CRAFTED_CGROUP)
    try:
        for path in (delegated, delegated / "cgroup.procs"):
            os.chown(path, hostile_user.uid, hostile_user.gid)
        with hostile_targets(hostile_user, ("comm",)) as targets:
            pid = targets[0].pid
            (delegated / "cgroup.procs").write_text(str(pid))    # root delegates it
            move = (f"import os; os.mkdir({crafted!r}); "
                    f"open(os.path.join({crafted!r}, b'cgroup.procs'), 'w').write('{pid}')")
            subprocess.run(["setpriv", f"--reuid={hostile_user.uid}",
                            f"--regid={hostile_user.gid}", "--clear-groups",
                            "/usr/bin/python3", "-c", move], check=True, timeout=30)
            assert CRAFTED_CGROUP in Path(f"/proc/{pid}/cgroup").read_bytes()
            with run_daemon(tmp_path, select=SELECT) as daemon:
                wait_listed(daemon, pid)
                body = daemon.scrape()
                containers = {s["container"] for s in per_process_labels(body, [pid])}
                assert containers == {"abababababab"}
                assert_healthy(daemon)
                stop_in_time(daemon)
    finally:
        for path in (crafted, os.fsencode(delegated)):
            with contextlib.suppress(OSError):
                os.rmdir(path)


def test_profiles_and_top_of_hostile_names_stay_safe(hostile_user, tmp_path):
    """``aiobpf profile`` (collapsed on a terminal, the HTML flame graph) and ``aiobpf
    top`` of a process whose task names, qualnames and file names hold escapes,
    newlines, bytes that are not UTF-8 and 10 kB of text: every line a terminal gets is
    printable, one collapsed stack per line; the HTML cannot be broken out of."""
    with hostile_targets(hostile_user, ("argv0",)) as (target,):
        collapsed = run_cli("profile", str(target.pid), "--mode", "wall", "--duration", "0.5")
        page = tmp_path / "p.html"
        html = run_cli("profile", str(target.pid), "--mode", "wall", "--duration", "0.5",
                       "-o", str(page))
        top = run_cli("top", str(target.pid), "--iterations", "2")
    for result, what in ((collapsed, "profile"), (html, "profile -o"), (top, "top")):
        assert result.returncode == 0, result.stderr
        assert_terminal_safe(result.stdout, what)
        assert_terminal_safe(result.stderr, what)
    lines = assert_terminal_safe(collapsed.stdout, "profile").splitlines()
    assert lines and all(re.fullmatch(r".+ \d+", line) for line in lines)
    assert any("fake line" in line for line in lines)
    text = page.read_text()
    assert text.count("<script") == 2 and text.count("</script>") == 2

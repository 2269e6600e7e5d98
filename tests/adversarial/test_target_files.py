"""Files a hostile target names or maps, against a real root daemon (issue 11, items 2-4).

One daemon watches a set of processes of ``hostile_user``, each running asyncio with
its own crafted ``_asyncio`` module (on PYTHONPATH, so the interpreter maps it):

- ``shadow``: its ``.gnu_debuglink`` is the absolute path /etc/shadow;
- ``fifo``: its ``.gnu_debuglink`` is the absolute path of a FIFO the user made in /tmp
  (a reader that opens it blocks until a writer comes: the daemon's loop used to);
- ``idfifo`` and ``idlink`` (in the sid root, standing for a container the user
  controls): the build-id path of the debug file in that root is a FIFO, or a symlink
  to one;
- ``loop``: the module's DWARF has ``TaskObj`` as a typedef of itself;
- ``huge``: a section header claims 1 TiB;
- ``poison``: the real debug build's module with the victim's build-id, whose DWARF
  puts ``task_coro`` where ``task_name`` is (a plausible lie).

Then a victim starts (root, the real module of the same build): the daemon traces it
within 10 s (it still discovers processes) and reads it right (its dump equals a direct
read with no cache).  Meanwhile the daemon never holds /etc/shadow or a FIFO open, no
FIFO ever has a reader, ``aiobpf pstree`` of every attacker answers, the daemon's RSS
stays bounded, its metrics stay fresh and SIGTERM stops it within 3 s.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aiobpf.collector.elf import ElfImage
from tests.adversarial.conftest import STOP_WITHIN_S, User
from tests.conftest import IN_ROOT_DIR, TARGETS, RunningTarget, _as_user, aiobpf, run_target
from tests.crafted_elf import (
    patch_member_offset,
    patch_section_size,
    patch_typedef_loop,
    set_build_id,
    set_debuglink,
)
from tests.integration.daemon_proc import DaemonProcess, run_daemon
from tests.pythons import SID_ROOT, Python, by_label

PY311 = by_label("debian-3.11")
PY311D = Python("debian-3.11d", (3, 11), "/usr/bin/python3.11d")
SID314 = by_label("sid-3.14")
DYNLOAD = Path("/usr/lib/python3.11/lib-dynload")
ASYNCIO_311 = "_asyncio.cpython-311-x86_64-linux-gnu.so"
ASYNCIO_311D = "_asyncio.cpython-311d-x86_64-linux-gnu.so"
ASYNCIO_314 = "_asyncio.cpython-314-x86_64-linux-gnu.so"
SCRIPT = "aiobpf_files_{}.py"              # a copy of depth.py per process
SELECT = r"/aiobpf_files_[a-z]+\.py"      # only this file's targets
VERDICT_TIMEOUT_S = 60.0                  # cold DWARF of python3.11d takes a while
ANON_BOUND_MB = 384.0      # measured 160-260 MB: the cold DWARF of the real debug files
O_PATH = os.O_PATH                         # as /proc/PID/fdinfo shows it (octal flags)
                           # (libpython3.14's above all) dominates, not the attacks


@dataclass
class Attack:
    daemon: DaemonProcess
    user: User
    public: Path                               # the user's directory in /tmp
    fifos: list[Path]                          # as the host sees them
    procs: dict[str, RunningTarget]
    rss_before: float
    seen_open: list[str] = field(default_factory=list)    # what the daemon held open
    fifo_readers: list[str] = field(default_factory=list)


def _anon_mb(daemon: DaemonProcess) -> float:
    """The daemon's anonymous memory (its heap; not the libraries it maps)."""
    status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines()
                    if ln.startswith("RssAnon"))) / 1024


def _verdict(daemon: DaemonProcess, pid: int, timeout: float = VERDICT_TIMEOUT_S) -> str:
    """The daemon's log line about ``pid``: traced, or not and why (a line saying it
    will look again is not a verdict)."""
    pattern = re.compile(rf"pid {pid}[ :].*traced.*")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pattern.search(daemon.log.read_text())
        if found:
            return found.group(0)
        time.sleep(0.2)
    pytest.fail(f"no verdict on pid {pid} in {timeout} s:\n{daemon.log.read_text()[-3000:]}")


def _opens(fd: Path, target: str, inodes: dict[str, int]) -> bool:
    """Whether descriptor ``fd`` of the daemon, whose link named ``target``, opens it:
    it is still that file (the daemon closes and reuses descriptor numbers all the time,
    so the link, the fdinfo and the inode are compared, not trusted one by one) and it
    is not ``O_PATH`` (which names a file without opening it: no FIFO sees a reader,
    nothing is read; that is how aiobpf first reaches a file)."""
    try:
        info = Path(str(fd).replace("/fd/", "/fdinfo/", 1)).read_text()
        again = os.readlink(fd)
    except OSError:
        return False   # closed meanwhile
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    if again != target or int(fields["ino"]) != inodes[target]:
        return False   # the number names another file now
    return not int(fields["flags"], 8) & O_PATH


def _watch(attack: Attack, stop: threading.Event) -> None:
    """Every 20 ms: what the daemon holds open (O_PATH descriptors open nothing), and
    whether any FIFO has a reader (a writer's non-blocking open fails with ENXIO unless
    some reader has it open, or is blocked opening it)."""
    fd_dir = Path(f"/proc/{attack.daemon.proc.pid}/fd")
    watched = {str(f) for f in attack.fifos} | {str(f.resolve()) for f in attack.fifos}
    inodes = {path: os.stat(path).st_ino for path in watched | {"/etc/shadow"}}
    while not stop.is_set():
        try:
            for fd in fd_dir.iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target in inodes and _opens(fd, target, inodes):
                    attack.seen_open.append(target)
        except OSError:
            pass
        for fifo in attack.fifos:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    attack.fifo_readers.append(f"{fifo}: {exc}")
                continue
            os.close(fd)
            attack.fifo_readers.append(str(fifo))
        stop.wait(0.02)


def _as(user: User, *argv: str) -> None:
    subprocess.run(_as_user(user.name, list(argv)), check=True, timeout=30)


def _crafted(source: Path, out: Path) -> Path:
    shutil.copy(source, out)
    out.chmod(0o755)
    return out


@pytest.fixture(scope="module")
def attack(hostile_user: User, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attack]:
    for python in (PY311, PY311D, SID314):
        if not python.available():
            pytest.fail(f"{python.host_executable} is missing (scripts/provision.sh)")
    tmp = tmp_path_factory.mktemp("target-files")
    user = hostile_user
    with ExitStack() as stack:
        public = Path(tempfile.mkdtemp(prefix="af", dir="/tmp"))     # short: fits a debuglink
        stack.callback(shutil.rmtree, public, True)
        in_sid = Path(tempfile.mkdtemp(prefix="af", dir=SID_ROOT / "tmp"))
        stack.callback(shutil.rmtree, in_sid, True)
        made: list[Path] = []                      # in the sid root's debug directory
        stack.callback(lambda: [p.unlink(missing_ok=True) if not p.is_dir() or p.is_symlink()
                                else p.rmdir() for p in reversed(made)])

        script = TARGETS / "depth.py"
        mods: dict[str, Path] = {}
        for name in ("shadow", "fifo", "loop", "huge", "poison", "victim", "idfifo", "idlink"):
            (public / name).mkdir()
            shutil.copy(script, public / name / SCRIPT.format(name))
        # the debuglink names an absolute path: a host file only root may read, a FIFO
        fifo = public / "fifo" / "p"
        for name, link in (("shadow", "/etc/shadow"), ("fifo", str(fifo))):
            mods[name] = _crafted(DYNLOAD / ASYNCIO_311, public / name / ASYNCIO_311)
            set_build_id(mods[name], "af" + secrets.token_hex(19))   # no debug file has it
            set_debuglink(mods[name], link)
        # a self-referencing DWARF type; a section of 1 TiB
        mods["loop"] = _crafted(DYNLOAD / ASYNCIO_311D, public / "loop" / ASYNCIO_311D)
        patch_typedef_loop(mods["loop"], "TaskObj")
        mods["huge"] = _crafted(DYNLOAD / ASYNCIO_311, public / "huge" / ASYNCIO_311)
        patch_section_size(mods["huge"], ".rodata", 1 << 40)
        # the victim's build-id (the file is the real one but for its DWARF)
        mods["poison"] = _crafted(DYNLOAD / ASYNCIO_311D, public / "poison" / ASYNCIO_311D)
        assert patch_member_offset(mods["poison"], "TaskObj", "task_coro", 144) == 136
        # inside the sid root: the build-id path of the debug file is a FIFO, or a symlink
        # to one (the user's FIFO in that root's /tmp)
        sid_asyncio = SID_ROOT / "usr/lib/python3.14/lib-dynload" / ASYNCIO_314
        in_sid.chmod(0o755)
        sid_fifo = in_sid / "p"
        build_ids = {}
        for name in ("idfifo", "idlink"):
            (in_sid / name).mkdir()
            mods[name] = _crafted(sid_asyncio, in_sid / name / ASYNCIO_314)
            build_ids[name] = "af" + secrets.token_hex(19)
            set_build_id(mods[name], build_ids[name])
        debug_dir = SID_ROOT / "usr/lib/debug/.build-id/af"
        if not debug_dir.exists():
            debug_dir.mkdir(parents=True)
            made.append(debug_dir)
        for name in ("idfifo", "idlink"):
            entry = debug_dir / f"{build_ids[name][2:]}.debug"
            made.append(entry)
            if name == "idfifo":
                os.mkfifo(entry)
            else:
                os.symlink(f"/tmp/{in_sid.name}/p", entry)
            os.lchown(entry, user.uid, user.gid)
        subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(public), str(in_sid)],
                       check=True)
        _as(user, "mkfifo", str(fifo))
        _as(user, "mkfifo", str(sid_fifo))
        fifos = [fifo, sid_fifo, debug_dir / f"{build_ids['idfifo'][2:]}.debug"]
        for path in fifos:
            assert stat.S_ISFIFO(path.stat().st_mode)

        daemon = stack.enter_context(run_daemon(
            tmp, select=SELECT, env={"AIOBPF_CACHE_DIR": str(tmp / "layouts")}))
        attack = Attack(daemon, user, public, fifos, {}, _anon_mb(daemon))
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(attack, stop), daemon=True)
        watcher.start()
        stack.callback(watcher.join, 5)
        stack.callback(stop.set)

        runs = {"shadow": PY311, "fifo": PY311, "loop": PY311D, "huge": PY311,
                "poison": PY311D, "idfifo": SID314, "idlink": SID314}
        for name, python in runs.items():
            where = f"/tmp/{in_sid.name}/{name}" if python.root else str(public / name)
            if python.root:   # run_target copies the script into the root
                copy = Path(f"{python.root}{IN_ROOT_DIR}") / SCRIPT.format(name)
                stack.callback(copy.unlink, True)
            attack.procs[name] = stack.enter_context(run_target(
                python, public / name / SCRIPT.format(name), "3", "2",
                name=SCRIPT.format(name), user=user.name, env={"PYTHONPATH": where}))
        yield attack


def test_each_attacker_maps_its_crafted_module(attack: Attack) -> None:
    """The attacks are real: each process mapped the crafted file (else this proves
    nothing), and the daemon came to a verdict on every one."""
    for name, target in attack.procs.items():
        maps = Path(f"/proc/{target.pid}/maps").read_text()
        assert re.search(rf"/{name}/_asyncio\.cpython-31[14]d?-x86_64-linux-gnu\.so", maps), name
        print(name, _verdict(attack.daemon, target.pid))


def test_an_absolute_debuglink_is_never_opened(attack: Attack) -> None:
    """/etc/shadow and the user's FIFO, named by ``.gnu_debuglink``: the resolver never
    asks for them, and the daemon never held them open."""
    from aiobpf.collector.elf import _debug_names
    for name in ("shadow", "fifo"):
        _verdict(attack.daemon, attack.procs[name].pid)
        module = next((attack.public / name).glob("_asyncio.*.so"))
        with module.open("rb") as stream:
            image = ElfImage.from_stream(stream, module)
            assert image.debuglink in ("/etc/shadow", str(attack.fifos[0]))
            names = _debug_names(image)
        assert names and all(not n.startswith("/") and ".." not in n for n in names), names
        assert image.debuglink not in names
    assert attack.seen_open == []
    assert attack.fifo_readers == []


def test_fifo_or_symlink_at_the_build_id_path(attack: Attack) -> None:
    """In the target's root, the debug file by build-id is a FIFO or a symlink to one:
    the daemon is not held up and never reads them; ``aiobpf pstree`` answers."""
    for name in ("idfifo", "idlink", "fifo"):
        pid = attack.procs[name].pid
        verdict = _verdict(attack.daemon, pid)
        assert "traced" in verdict, verdict
        t0 = time.monotonic()
        out = aiobpf("pstree", str(pid), "--no-daemon", "--capture", "memory", timeout=60)
        took = time.monotonic() - t0
        assert out.returncode == 0 and "level" in out.stdout, out.stderr
        assert "Traceback" not in out.stderr
        print(f"pstree {name}: {took:.1f} s")
    assert attack.fifo_readers == []
    assert attack.seen_open == []


def test_malformed_modules_cost_only_their_process(attack: Attack) -> None:
    """A typedef of itself, a section of 1 TiB: verdicts come, the daemon's memory stays
    bounded, and the loop process is still read (its layout from the tables)."""
    huge = _verdict(attack.daemon, attack.procs["huge"].pid)
    assert "not traced" in huge, huge
    loop = _verdict(attack.daemon, attack.procs["loop"].pid)
    assert "traced" in loop, loop
    anon = _anon_mb(attack.daemon)
    print(f"daemon anonymous RSS {attack.rss_before:.0f} MB before the attacks, "
          f"{anon:.0f} MB after (total RSS {attack.daemon.rss_mb():.0f} MB)")
    assert anon < ANON_BOUND_MB
    assert "malformed_file" in attack.daemon.scrape()


def test_a_crafted_file_does_not_poison_the_victims_layout(attack: Attack) -> None:
    """The ``poison`` module carries the victim's build-id and lying DWARF; a root
    process with the real module, examined after it, is read right through the daemon
    (its dump is what a direct read with a fresh cache gives)."""
    _verdict(attack.daemon, attack.procs["poison"].pid)
    script = attack.public / "victim" / SCRIPT.format("victim")
    with run_target(PY311D, script, "3", "2") as victim:
        took = attack.daemon.wait_traced(victim.pid, timeout=30.0)
        print(f"victim traced after {took:.1f} s")
        sock = str(attack.daemon.socket)
        via = aiobpf("pstree", str(victim.pid), "--capture", "memory", socket=sock)
        fresh = Path(tempfile.mkdtemp(prefix="aiobpf-cache-"))
        try:
            os.environ["AIOBPF_CACHE_DIR"] = str(fresh)
            direct = aiobpf("pstree", str(victim.pid), "--capture", "memory", "--no-daemon")
        finally:
            del os.environ["AIOBPF_CACHE_DIR"]
            shutil.rmtree(fresh, ignore_errors=True)
        assert direct.returncode == 0 and direct.stdout.count("level ") == 6, direct
        assert via.returncode == 0, via.stderr
        assert via.stdout == direct.stdout


def test_the_daemon_stays_healthy_and_stops(attack: Attack) -> None:
    """After all of it: fresh metrics, a new process traced within 10 s, SIGTERM < 3 s."""
    daemon = attack.daemon
    daemon.assert_fresh()
    script = attack.public / "victim" / SCRIPT.format("victim")
    with run_target(PY311, script, "3", "2") as fresh:
        daemon.wait_traced(fresh.pid, timeout=10.0)
    assert attack.seen_open == [] and attack.fifo_readers == []
    took = daemon.stop_within(STOP_WITHIN_S)
    print(f"stopped {took:.2f} s after SIGTERM")
    assert took < STOP_WITHIN_S

"""Attacks on the metrics endpoint, by a user of the same host who can reach its port.

Idle connections, slowloris requests and oversized headers from ``hostile_user`` must not
exhaust the daemon's threads or memory, nor hold a connection beyond the endpoint's
timeout, nor (from one address) keep a scraper on another address from its metrics.
The render cache must never serve an older state than a previous scrape saw.  With a
web config, a real Prometheus scrapes over TLS with basic auth, and everyone else gets
401 or no HTTP at all.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from aiobpf.daemon.metrics_server import MAX_CONNECTIONS, MAX_PER_PEER, REQUEST_TIMEOUT_S
from tests.adversarial.conftest import User, assert_healthy, stop_in_time
from tests.conftest import IN_ROOT_DIR, _as_user
from tests.integration.daemon_proc import DaemonProcess, run_daemon
from tests.integration.prom import Prometheus

pytestmark = pytest.mark.integration

# These daemons trace only this file's own target (no other test's processes).
PYTHON = "sid-3.14"
TARGET = "endpoint_depth.py"
SELECT = " " + re.escape(f"{IN_ROOT_DIR}/{TARGET}")



# Closed "promptly": well under the timeout, with room for a loaded machine.
PROMPTLY_S = 2.0
# Closed by the timeout: REQUEST_TIMEOUT_S after the connection was accepted, and the
# reaper's half-second period.
TIMED_OUT_BY_S = REQUEST_TIMEOUT_S + 2.5
HOLD_S = REQUEST_TIMEOUT_S + 5

# The attacker (stdlib only, run by /usr/bin/python3 as the hostile user): opens
# connections from 127.0.0.2, 127.0.0.3, ... (any local user may bind those), each of
# one kind: "idle" sends nothing, "slow" sends a request line and then a byte every
# half second (slowloris), "big" sends 50 KiB of headers without ever ending them.
# It prints READY once connected, then, after HOLD seconds or once the server closed
# everything, one JSON line: each connection's kind and when the server closed it
# (seconds after connecting; null: still open).
ATTACKER = r"""
import json, select, socket, sys, time
port, addresses, per_address, hold = (int(sys.argv[1]), int(sys.argv[2]),
                                      int(sys.argv[3]), float(sys.argv[4]))
kinds = sys.argv[5].split(",")
conns = []
for a in range(addresses):
    for i in range(per_address):
        s = socket.socket()
        s.bind((f"127.0.0.{2 + a}", 0))
        s.connect(("127.0.0.1", port))
        c = {"sock": s, "opened": time.monotonic(), "kind": kinds[i % len(kinds)],
             "closed": None, "next": 0.0}
        conns.append(c)
        try:
            if c["kind"] == "slow":
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            elif c["kind"] == "big":
                s.sendall(b"GET /metrics HTTP/1.1\r\n" + b"".join(
                    b"X-Pad-%d: %s\r\n" % (n, b"a" * 600) for n in range(85)))
        except OSError:
            c["closed"] = time.monotonic() - c["opened"]
print("READY", len(conns), flush=True)
end = time.monotonic() + hold
while time.monotonic() < end:
    live = [c for c in conns if c["closed"] is None]
    if not live:
        break
    now = time.monotonic()
    for c in live:
        if c["kind"] == "slow" and now >= c["next"]:
            c["next"] = now + 0.5
            try:
                c["sock"].send(b"X")
            except OSError:
                c["closed"] = now - c["opened"]
    ready, _, _ = select.select([c["sock"] for c in live if c["closed"] is None], [], [],
                                0.1)
    for c in live:
        if c["sock"] in ready and c["closed"] is None:
            try:
                data = c["sock"].recv(65536)
            except OSError:
                data = b""
            if not data:
                c["closed"] = time.monotonic() - c["opened"]
print(json.dumps([{"kind": c["kind"], "closed": c["closed"]} for c in conns]), flush=True)
"""


@dataclass
class Attack:
    proc: subprocess.Popen

    def wait_connected(self) -> int:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY"), f"the attacker failed: {line}{self.stderr()}"
        return int(line.split()[1])

    def result(self) -> list[dict]:
        out, err = self.proc.communicate(timeout=HOLD_S + 30)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr else ""


@contextmanager
def attack(user: User, port: int, addresses: int, per_address: int,
           kinds: str = "idle,slow,big") -> Iterator[Attack]:
    argv = _as_user(user.name, ["/usr/bin/python3", "-c", ATTACKER, str(port),
                                str(addresses), str(per_address), str(HOLD_S), kinds])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={"PATH": "/usr/bin:/bin"})
    try:
        yield Attack(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def threads(daemon: DaemonProcess) -> int:
    status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("Threads:")))


def timed_scrape(daemon: DaemonProcess, timeout: float = 5.0) -> tuple[bool, float]:
    """(answered with 200, seconds taken); refused or reset counts as not answered."""
    t0 = time.monotonic()
    try:
        daemon.scrape(timeout=timeout)
        return True, time.monotonic() - t0
    except OSError:          # urllib's HTTPError (503), resets, timeouts
        return False, time.monotonic() - t0


def test_idle_slow_and_oversized_connections_from_one_address_are_closed_and_starve_no_one(
        tmp_path: Path, hostile_user: User) -> None:
    with run_daemon(tmp_path, select=SELECT) as daemon:
        base_threads, base_rss = threads(daemon), daemon.rss_mb()
        with attack(hostile_user, daemon.port, addresses=1, per_address=30) as hostile:
            assert hostile.wait_connected() == 30
            answered, slowest, most_threads = 0, 0.0, 0
            deadline = time.monotonic() + REQUEST_TIMEOUT_S
            while time.monotonic() < deadline:
                ok, took = timed_scrape(daemon)
                answered += ok
                slowest = max(slowest, took)
                most_threads = max(most_threads, threads(daemon))
                time.sleep(0.3)
            closed = hostile.result()
        # The scraper (another address, as a Prometheus server is) was always served.
        assert answered >= 10 and slowest < PROMPTLY_S, (answered, slowest)
        assert most_threads <= base_threads + MAX_PER_PEER + 1, (base_threads, most_threads)
        assert daemon.rss_mb() < base_rss + 20
        never = [c for c in closed if c["closed"] is None]
        assert not never, f"{len(never)} connections never closed: {never[:5]}"
        held = [c for c in closed if c["closed"] > PROMPTLY_S]
        assert len(held) <= MAX_PER_PEER, held
        assert all(c["closed"] <= TIMED_OUT_BY_S for c in held), held
        # Oversized requests are cut at the size bound, not read until the timeout.
        assert all(c["closed"] <= PROMPTLY_S for c in closed if c["kind"] == "big"), closed
        rejected = daemon.scrape()
        for reason in ("too_many_from_peer", "timeout", "too_large"):
            assert f'aiobpf_http_rejected_total{{reason="{reason}"}}' in rejected, reason
        assert_healthy(daemon, TARGET)
        stop_in_time(daemon)


def test_a_flood_from_many_addresses_is_capped_refused_at_once_and_recovers(
        tmp_path: Path, hostile_user: User) -> None:
    addresses, per_address = 12, MAX_PER_PEER + 2      # 72 > MAX_CONNECTIONS
    with run_daemon(tmp_path, select=SELECT) as daemon:
        base_threads, base_rss = threads(daemon), daemon.rss_mb()
        with attack(hostile_user, daemon.port, addresses, per_address,
                    kinds="idle,slow") as hostile:
            assert hostile.wait_connected() == addresses * per_address
            most_threads, slowest = 0, 0.0
            for _ in range(10):
                # Refused or answered, but at once: nothing waits behind the flood.
                slowest = max(slowest, timed_scrape(daemon)[1])
                most_threads = max(most_threads, threads(daemon))
                time.sleep(0.3)
            peak_rss = daemon.rss_mb()
            closed = hostile.result()
        assert slowest < PROMPTLY_S, slowest
        assert most_threads <= base_threads + MAX_CONNECTIONS + 1, (base_threads, most_threads)
        assert peak_rss < base_rss + 30, (base_rss, peak_rss)
        never = [c for c in closed if c["closed"] is None]
        assert not never, f"{len(never)} connections never closed"
        held = [c for c in closed if c["closed"] > PROMPTLY_S]
        assert len(held) <= MAX_CONNECTIONS, len(held)
        assert all(c["closed"] <= TIMED_OUT_BY_S for c in held), held
        assert len(closed) - len(held) >= addresses * per_address - MAX_CONNECTIONS
        # Once the flood's connections timed out, scrapes are answered again.
        ok, took = timed_scrape(daemon)
        assert ok and took < PROMPTLY_S, took
        assert 'aiobpf_http_rejected_total{reason="too_many_connections"}' in daemon.scrape()
        assert_healthy(daemon, TARGET)
        stop_in_time(daemon)


ACCEPTS = [
    {},
    {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
    {"Accept": "text/plain; version=0.0.4"},
    {"Accept-Encoding": "gzip"},
]
# Pauses between bursts of scrapes, around the daemon's publishing period (a tick,
# 0.2 s), so that some states are scraped in several formats and some not at all.
PAUSES = [0.2, 0.05, 0.2, 0.1, 0.3]


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in the scrape")


def scrape_as(daemon: DaemonProcess, headers: dict[str, str]) -> str:
    request = urllib.request.Request(daemon.url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as reply:
        body = reply.read()
        if reply.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
    return body.decode()  # type: ignore[no-any-return]


def test_scrapes_never_go_back_in_time_while_the_state_changes(tmp_path: Path) -> None:
    """Scrapes in bursts of several formats (as Prometheus servers of different versions
    would ask), each format again after another: each page shows a state at least as
    new as the one before (the daemon's own CPU counter and last-scan time never
    decrease) and no older than the scan before the scrape began.  (A cache that
    rendered each format when first asked served, within one state, an older CPU
    counter after a newer one; one keyed by id() of the state served pages of a state
    whose address a newer one reused.)"""
    with run_daemon(tmp_path, select=SELECT) as daemon:
        daemon.assert_fresh()    # its scans have begun
        last_cpu, last_scan = 0.0, 0.0
        stale, back = [], []
        end = time.monotonic() + 15
        n = bursts = 0
        while time.monotonic() < end:
            first, other = ACCEPTS[bursts % 2], ACCEPTS[1 - bursts % 2]
            burst = [first, other, first]
            if bursts % 5 == 4:
                burst.append(ACCEPTS[2 + bursts // 5 % 2])
            for accept in burst:
                began = time.time()
                text = scrape_as(daemon, accept)
                cpu = sample(text, "process_cpu_seconds_total")
                scan = sample(text, "aiobpf_last_scan_timestamp_seconds")
                if cpu < last_cpu or scan < last_scan:
                    back.append((n, last_cpu, cpu, last_scan, scan))
                # The default scan_interval is 1 s: a page is stale when its last scan
                # is more than that (and a slow scan) older than the scrape.
                if scan < began - 3.0:
                    stale.append((n, began - scan))
                last_cpu, last_scan = max(cpu, last_cpu), max(scan, last_scan)
                n += 1
            bursts += 1
            time.sleep(PAUSES[bursts % len(PAUSES)])
        assert bursts > 30, bursts
        assert not back, ("scrapes went back (scrape, CPU before, after, last scan "
                          f"before, after): {back[:10]}")
        assert not stale, f"stale pages (scrape, seconds old): {stale[:10]}"
        assert_healthy(daemon, TARGET)
        stop_in_time(daemon)


# -- TLS and basic auth -------------------------------------------------------------------
PASSWORD = "correct horse battery staple"


@dataclass
class TLSDaemon(DaemonProcess):
    ca: Path
    auth: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/metrics"

    def scrape(self, timeout: float = 10) -> str:
        context = ssl.create_default_context(cafile=str(self.ca))
        request = urllib.request.Request(self.url, headers={"Authorization": self.auth})
        with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:
            return reply.read().decode()  # type: ignore[no-any-return]


def make_certificate(directory: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (its own CA), made by openssl."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=aiobpf test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(directory / "server.key"),
                    "-out", str(directory / "server.crt")],
                   check=True, capture_output=True, timeout=60)
    return directory / "server.crt"


@contextmanager
def tls_daemon(tmp: Path, web_config: Path, ca: Path) -> Iterator[TLSDaemon]:
    """run_daemon, but with ``--web-config``, and waiting for a TLS scrape with the
    password."""
    auth = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    with run_daemon(tmp, select=SELECT, args=["--web-config", str(web_config)],
                    process=lambda proc, port, sock, log: TLSDaemon(proc, port, sock, log,
                                                                    ca, auth)) as daemon:
        assert isinstance(daemon, TLSDaemon)
        yield daemon


# Run as the hostile user: what an unauthenticated, a wrong-password and a plain-HTTP
# client get from the TLS port, and whether a silent TLS client is dropped in time.
PROBE = r"""
import base64, json, socket, ssl, sys, time, urllib.error, urllib.request
port = int(sys.argv[1])
url = f"https://127.0.0.1:{port}/metrics"
context = ssl.create_default_context(cadata=sys.stdin.read())  # the CA, on stdin
out = {}
for label, auth in (("none", None), ("wrong", "prometheus:guess"),
                    ("unknown_user", "root:" + sys.argv[2])):
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            out[label] = reply.status
    except urllib.error.HTTPError as exc:
        out[label] = exc.code
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        out["plain_http"] = reply.status
except Exception as exc:
    out["plain_http"] = type(exc).__name__
silent = socket.create_connection(("127.0.0.1", port))
silent.settimeout(30)
t0 = time.monotonic()
try:
    silent.recv(1)
except OSError:
    pass
out["silent_closed_after"] = time.monotonic() - t0
print(json.dumps(out))
"""


def test_tls_with_basic_auth_serves_prometheus_and_refuses_everyone_else(
        tmp_path: Path, hostile_user: User) -> None:
    certs = tmp_path / "web"
    certs.mkdir()
    ca = make_certificate(certs)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    web = certs / "web.yml"
    web.write_text("tls_server_config:\n"
                   "  cert_file: server.crt\n"       # relative to web.yml
                   "  key_file: server.key\n"
                   "  min_version: TLS12\n"
                   "basic_auth_users:\n"
                   f"  prometheus: {hashed}\n")
    with tls_daemon(tmp_path, web, ca) as daemon:
        target = json.dumps([f"127.0.0.1:{daemon.port}"])
        basic = "    basic_auth:\n      username: prometheus\n      password: {}\n"
        prom = Prometheus(
            tmp_path, [f"127.0.0.1:{daemon.port}"],
            job=("    scheme: https\n"
                 f"    tls_config:\n      ca_file: {ca}\n" + basic.format(json.dumps(PASSWORD))),
            more_jobs=("  - job_name: wrong_password\n    scheme: https\n"
                       f"    tls_config:\n      ca_file: {ca}\n" + basic.format('"guess"')
                       + f"    static_configs:\n      - targets: {target}\n"
                       "  - job_name: plain_http\n"
                       f"    static_configs:\n      - targets: {target}\n"))
        try:
            prom.wait_for('up{job="aiobpf"}', lambda v: v == 1.0)
            prom.wait_for('count(aiobpf_build_info{job="aiobpf"})', lambda v: v == 1.0)
            prom.wait_for('up{job="wrong_password"}', lambda v: v == 0.0)
            prom.wait_for('up{job="plain_http"}', lambda v: v == 0.0)
        finally:
            prom.close()
        probe = subprocess.run(
            _as_user(hostile_user.name, ["/usr/bin/python3", "-c", PROBE, str(daemon.port),
                                         PASSWORD]),
            input=ca.read_text(), capture_output=True, text=True, timeout=60,
            env={"PATH": "/usr/bin:/bin"})
        assert probe.returncode == 0, probe.stderr
        said = json.loads(probe.stdout)
        assert (said["none"], said["wrong"], said["unknown_user"]) == (401, 401, 401), said
        assert said["plain_http"] != 200, said
        # A client that never starts its TLS handshake is dropped at the timeout.
        assert said["silent_closed_after"] <= TIMED_OUT_BY_S, said
        assert 'aiobpf_http_rejected_total{reason="unauthorized"}' in daemon.scrape()
        assert_healthy(daemon, TARGET)
        stop_in_time(daemon)

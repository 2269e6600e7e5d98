"""Await sites people can act on: ``aiobpf_suspended_tasks{site}`` of a real aiohttp
server (Debian sid's python3-aiohttp under 3.14, with and without uvloop, and 3.13)
under wrk, scraped from the real daemon.  Its handlers wait on a slow upstream through
aiohttp's client: the site must be the application's ``call_backend``, not aiohttp's
``DataQueue.read`` (unless the config asks for library frames)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TARGETS, require_modules, run_target, stop
from tests.integration.daemon_proc import DaemonProcess, run_daemon
from tests.integration.prom import free_port
from tests.pythons import by_label

SCRIPT = "aiohttp_sites.py"
SELECT = r" /home/user/aiohttp_sites\.py front "
CONNECTIONS = 32          # wrk's: one handler task in flight per connection
UPSTREAM_DELAY_S = "0.3"


def _line_of(marker: str) -> int:
    return next(n for n, text in enumerate((TARGETS / SCRIPT).read_text().splitlines(), 1)
                if marker in text)


def _sites(daemon: DaemonProcess, pid: int) -> dict[str, float]:
    """aiobpf_suspended_tasks of ``pid``, by site, from one scrape of the daemon."""
    families = text_string_to_metric_families(daemon.scrape())
    return {s.labels["site"]: s.value for f in families if f.name == "aiobpf_suspended_tasks"
            for s in f.samples if s.labels.get("pid") == str(pid)}


def _wait_for_site(daemon: DaemonProcess, pid: int, site: str,
                   timeout: float = 30.0) -> dict[str, float]:
    """The sites once those starting with ``site`` hold at least half the connections'
    handlers; fails after ``timeout`` saying which sites there were."""
    deadline = time.monotonic() + timeout
    sites: dict[str, float] = {}
    while time.monotonic() < deadline:
        sites = _sites(daemon, pid)
        if sum(n for s, n in sites.items() if s.startswith(site)) >= CONNECTIONS / 2:
            return sites
        time.sleep(0.5)
    pytest.fail(f"no {site!r} with {CONNECTIONS // 2}+ tasks in {timeout} s; sites: {sites}")


@contextmanager
def _loaded_server(label: str, loop: str) -> Iterator[int]:
    """The front server's pid, under wrk's load for as long as the context lasts."""
    python = by_label(label)
    require_modules(python, "aiohttp", *(["uvloop"] if loop == "uvloop" else []))
    up_port, front_port = free_port(), free_port()
    with (run_target(python, SCRIPT, "upstream", str(up_port), UPSTREAM_DELAY_S),
          run_target(python, SCRIPT, "front", str(front_port), str(up_port), loop) as front):
        wrk = subprocess.Popen(["wrk", "-t1", f"-c{CONNECTIONS}", "-d300s",
                                f"http://127.0.0.1:{front_port}/"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        try:
            yield front.pid
        finally:
            stop(wrk)


@pytest.mark.parametrize(("label", "loop"), [
    ("sid-3.14", "asyncio"), ("sid-3.14", "uvloop"),
    ("sid-3.13", "asyncio"),     # aiohttp's pure-Python fallbacks: Debian's C parts are 3.14+
])
def test_sites_of_an_aiohttp_server_are_the_application(tmp_path: Path, label: str,
                                                        loop: str) -> None:
    call_backend = f"call_backend /home/user/{SCRIPT}:{_line_of('handlers wait here')}"
    aiohttp_read = "DataQueue.read /usr/lib/python3/dist-packages/aiohttp/streams.py:"
    (tmp_path / "default").mkdir()
    (tmp_path / "library").mkdir()
    with _loaded_server(label, loop) as pid:
        with run_daemon(tmp_path / "default", select=SELECT) as daemon:
            daemon.wait_traced(pid, timeout=30)
            sites = _wait_for_site(daemon, pid, call_backend)
        assert not [s for s in sites if "/aiohttp/" in s and "streams.py" in s], sites
        # the connection tasks wait in aiohttp alone: named by aiohttp's frame
        assert any(s.startswith("RequestHandler.start ") for s in sites), sites
        # what site_frames = "library" names instead: the read inside aiohttp's client
        with run_daemon(tmp_path / "library", select=SELECT, bpf=False,
                        extra='site_frames = "library"\n') as daemon:
            daemon.wait_traced(pid, timeout=30)
            by_library = _wait_for_site(daemon, pid, aiohttp_read)
        assert call_backend not in by_library, by_library

"""A real Prometheus server (Debian's `prometheus` package) for the tests: started on
loopback with a temporary config and storage, queried through its HTTP API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

SCRAPE_INTERVAL_S = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str], job: str = "",
                 more_jobs: str = "") -> None:
        """``job``: more settings of the aiobpf job (YAML lines indented by four, e.g.
        scheme, tls_config, basic_auth); ``more_jobs``: further scrape_configs entries."""
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: scripts/provision.sh installs it")
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL_S}s\n"
            "scrape_configs:\n"
            "  - job_name: aiobpf\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n" + job + more_jobs)
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    pytest.fail(f"prometheus did not start: {(workdir / 'prometheus.log')}")
                time.sleep(0.2)

    def query(self, expr: str) -> list[dict]:
        """The instant vector ``expr`` evaluates to now."""
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, check: Callable[[float | None], bool], timeout: float = 30
                 ) -> float | None:
        """Poll ``expr`` until ``check`` holds for its value; fail with the last value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.value(expr)
            if check(value):
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"{expr} = {value} after {timeout} s")
            time.sleep(0.5)

    def targets_up(self) -> bool:
        return self.value("up") == 1.0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

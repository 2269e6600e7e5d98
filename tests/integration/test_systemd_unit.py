"""deploy/systemd/aiobpf.service, run for real with what it grants.

systemd is not PID 1 on every machine that runs the suite (this one's is not), so the
unit is not started with systemd-run: `systemd-analyze verify` checks it
(tests/unit/test_deploy.py), and here the daemon runs under setpriv with the unit's
capability bounding set and NoNewPrivileges, as root, as the unit runs it.  (Its
LimitMEMLOCK= needs CAP_SYS_RESOURCE to apply, which a test runner may lack; kernels
from 5.11 do not charge BPF maps to it.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import run_target
from tests.integration.daemon_proc import run_daemon
from tests.pythons import by_label
from tests.unit.test_deploy import unit_settings

APP = "fleet_app.py"
SELECT = r"/fleet_app\.py\b"
CAPABILITY_BITS = {"CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24,
                   "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_DAC_READ_SEARCH": 2,
                   "CAP_CHECKPOINT_RESTORE": 40}


def unit_wrapper() -> tuple[list[str], set[str]]:
    """setpriv with the unit's capability bounding set (and no-new-privs when the unit
    sets it); the capabilities it leaves."""
    unit = unit_settings()
    assert unit.get("User", "root") == "root"
    capabilities = set(unit["CapabilityBoundingSet"].split())
    bounding = ",".join(["-all", *(f"+{cap.removeprefix('CAP_').lower()}"
                                   for cap in sorted(capabilities))])
    wrapper = ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all"]
    if unit.get("NoNewPrivileges") == "yes":
        wrapper.append("--no-new-privs")
    return [*wrapper, "--"], capabilities


def effective(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("CapEff:")), 16)


def probe_hits(daemon, pid: int) -> float:
    return sum(float(line.rsplit(" ", 1)[1])
               for line in daemon.series("aiobpf_probe_hits_total", pid))


def test_daemon_with_the_units_capabilities(tmp_path: Path) -> None:
    wrapper, capabilities = unit_wrapper()
    with (run_target(by_label("sid-3.14"), APP) as in_root,
          run_target(by_label("debian-3.11"), APP) as on_host,
          run_daemon(tmp_path, select=SELECT, wrapper=wrapper,
                     env={"PYTHONUNBUFFERED": "1"}) as daemon):
        expected = sum(1 << CAPABILITY_BITS[cap] for cap in capabilities)
        assert effective(daemon.proc.pid) == expected
        for target in (in_root, on_host):
            daemon.wait_traced(target.pid, timeout=30)
        deadline = time.monotonic() + 60
        while not all(probe_hits(daemon, t.pid) > 0 for t in (in_root, on_host)):
            if time.monotonic() > deadline:
                pytest.fail(f"no BPF capture with the unit's capabilities:\n"
                            f"{daemon.log.read_text()[-3000:]}")
            time.sleep(0.5)
        for target in (in_root, on_host):
            (info,) = daemon.series("aiobpf_process_info", target.pid)
            assert 'capture="memory"' not in info, info
        assert "CAP_" not in daemon.log.read_text(), daemon.log.read_text()

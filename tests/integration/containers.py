"""Real containers for the tests: the aiobpf image (scripts/image.sh), the daemon run in
it as deploy/kubernetes/daemonset.yaml runs it, and target containers.

podman runs them with runc (crun cannot set rlimits in some VMs).  Every container
is labelled; a test's containers are removed when it ends, pass or fail, and a
previous run's leftovers before it starts.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kubernetes" / "daemonset.yaml"
RUNTIME = os.environ.get("AIOBPF_OCI_RUNTIME", "runc")
LABEL = "aiobpf.test=containers"
BASE = "docker.io/library/debian:bookworm-slim"


def podman(*args: str, timeout: float = 120, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    """Run podman; fails the test (with its stderr) when ``check`` and it fails."""
    try:
        out = subprocess.run(["podman", "--runtime", RUNTIME, *args], capture_output=True,
                             text=True, timeout=timeout)
    except FileNotFoundError:
        pytest.fail("podman is missing: scripts/provision.sh installs it", pytrace=False)
    if check and out.returncode != 0:
        pytest.fail(f"podman {' '.join(args)}: {out.stderr.strip()[-2000:]}", pytrace=False)
    return out


def ulimits() -> list[str]:
    """The host's own open-file and process limits: podman asks for more by default,
    which a runtime without CAP_SYS_RESOURCE (as in some VMs) cannot set.  The process
    limit is capped at 32768, what runc could set in such a VM."""
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    procs = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    return ["--ulimit", f"nofile={files}:{files}", "--ulimit", f"nproc={procs}:{procs}"]


@dataclass
class Image:
    name: str
    seconds: float              # what scripts/image.sh took (a build, a load, or nothing)
    said: str                   # its lines on stderr


def build_image() -> Image:
    """The image of the current inputs, built (or found, or loaded) by scripts/image.sh."""
    t0 = time.monotonic()
    out = subprocess.run(["bash", str(REPO / "scripts" / "image.sh"), "build"], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        pytest.fail(f"scripts/image.sh build failed:\n{out.stderr[-4000:]}", pytrace=False)
    said = "\n".join(line for line in out.stderr.splitlines() if line.startswith("image:"))
    return Image(out.stdout.split()[-1], time.monotonic() - t0, said)


def remove_leftovers() -> None:
    """Containers a previous run of these tests left (killed before its cleanup)."""
    ids = podman("ps", "-a", "-q", "--filter", f"label={LABEL}").stdout.split()
    if ids:
        podman("rm", "-f", "-t", "0", *ids)


@dataclass
class Container:
    name: str
    id: str
    pid: int                    # on the host

    @property
    def short_id(self) -> str:
        """The id as aiobpf labels a process in this container (12 hex digits)."""
        return self.id[:12]


@dataclass
class Pod:
    """Containers started by a test; removed (forced) by ``close``."""
    prefix: str
    names: list[str] = field(default_factory=list)

    def run(self, role: str, flags: Sequence[str], image: str, *args: str) -> Container:
        """``podman run -d`` of ``image`` (a directory, with --rootfs in ``flags``)."""
        name = f"{self.prefix}-{role}"
        self.names.append(name)
        podman("run", "-d", "--name", name, "--label", LABEL, *ulimits(), *flags,
               image, *args)
        return self.inspect(name)

    def inspect(self, name: str) -> Container:
        (info,) = json.loads(podman("inspect", name).stdout)
        return Container(name, info["Id"], info["State"]["Pid"])

    def logs(self, name: str) -> str:
        out = podman("logs", name, check=False)
        return (out.stdout + out.stderr)[-6000:]

    def state(self, name: str) -> dict:
        (info,) = json.loads(podman("inspect", name).stdout)
        return info["State"]

    def close(self) -> None:
        if self.names:
            podman("rm", "-f", "-t", "0", "--ignore", *self.names, check=False)


@contextmanager
def pod(prefix: str) -> Iterator[Pod]:
    remove_leftovers()
    containers = Pod(f"aiobpf-test-{prefix}-{os.getpid()}")
    try:
        yield containers
    finally:
        containers.close()


def wait_ready(container: Pod, name: str, timeout: float = 30) -> None:
    """Until the container's log has a READY line (a target's handshake)."""
    deadline = time.monotonic() + timeout
    while "READY" not in container.logs(name):
        if time.monotonic() > deadline or not container.state(name)["Running"]:
            pytest.fail(f"{name} did not get ready:\n{container.logs(name)}")
        time.sleep(0.2)


# -- the DaemonSet ------------------------------------------------------------------------
def daemonset() -> dict:
    (found,) = [doc for doc in yaml.safe_load_all(MANIFEST.read_text())
                if doc and doc["kind"] == "DaemonSet"]
    return found


def configmap_toml() -> str:
    (found,) = [doc for doc in yaml.safe_load_all(MANIFEST.read_text())
                if doc and doc["kind"] == "ConfigMap"]
    return found["data"]["aiobpf.toml"]


def manifest_capabilities() -> list[str]:
    (container,) = daemonset()["spec"]["template"]["spec"]["containers"]
    return list(container["securityContext"]["capabilities"]["add"])


# The pod and container fields the flags below translate; a field the manifest gains
# that is not here fails the test, so that the two cannot drift apart.
POD_FIELDS = {"serviceAccountName", "automountServiceAccountToken", "hostPID",
              "priorityClassName", "tolerations", "nodeSelector",
              "terminationGracePeriodSeconds", "containers", "volumes"}
CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "args", "ports", "env", "resources",
                    "readinessProbe", "livenessProbe", "securityContext", "volumeMounts"}
SECURITY_FIELDS = {"runAsUser", "runAsNonRoot", "privileged", "capabilities",
                   "seccompProfile", "appArmorProfile"}


def memory_flag(quantity: str) -> str:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    number, unit = quantity[:-2], quantity[-2:]
    return f"--memory={int(number) * units[unit]}"


@dataclass
class DaemonSetRun:
    flags: list[str]            # podman run's
    args: list[str]             # the container's
    grace: int                  # seconds between SIGTERM and the forced kill


def daemonset_run(*, config_dir: Path, host_paths: dict[str, Path], port: int,
                  capabilities: Sequence[str] | None = None) -> DaemonSetRun:
    """podman's flags for the DaemonSet's pod: its PID namespace, user, capabilities
    (``capabilities`` instead of the manifest's list, to test a smaller one), security
    profiles, memory limit, environment, volumes and port.  The ConfigMap volume is
    ``config_dir``; hostPath volumes are the host's paths, or ``host_paths[path]``
    (a test's own directory instead of the host's /run/aiobpf); the container port is
    published on the host's loopback at ``port``."""
    pod = daemonset()["spec"]["template"]["spec"]
    assert set(pod) <= POD_FIELDS, f"not translated to podman: {set(pod) - POD_FIELDS}"
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")
    (container,) = pod["containers"]
    assert set(container) <= CONTAINER_FIELDS, set(container) - CONTAINER_FIELDS
    security = container["securityContext"]
    assert set(security) <= SECURITY_FIELDS, set(security) - SECURITY_FIELDS
    assert security["privileged"] is False
    flags = ["--pid=host"] if pod["hostPID"] else []
    flags += ["--user", str(security["runAsUser"])]
    flags += [f"--cap-drop={cap}" for cap in security["capabilities"]["drop"]]
    added = security["capabilities"]["add"] if capabilities is None else capabilities
    flags += [f"--cap-add={cap}" for cap in added]
    profiles = {("seccompProfile", "RuntimeDefault"): [],
                ("seccompProfile", "Unconfined"): ["--security-opt", "seccomp=unconfined"],
                ("appArmorProfile", "RuntimeDefault"): [],
                ("appArmorProfile", "Unconfined"): ["--security-opt", "apparmor=unconfined"]}
    for key in ("seccompProfile", "appArmorProfile"):
        if key in security:
            flags += profiles[key, security[key]["type"]]
    if "limits" in container.get("resources", {}):
        flags.append(memory_flag(container["resources"]["limits"]["memory"]))
    for env in container.get("env", []):
        flags += ["--env", f"{env['name']}={env['value']}"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            source = config_dir
        else:
            path = volume["hostPath"]["path"]
            source = host_paths.get(path, Path(path))
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                source.mkdir(parents=True, exist_ok=True)
        flags += ["--volume", f"{source}:{mount['mountPath']}"
                  + (":ro" if mount.get("readOnly") else "")]
    (metrics,) = container["ports"]
    flags += ["--publish", f"127.0.0.1:{port}:{metrics['containerPort']}"]
    return DaemonSetRun(flags, list(container["args"]), pod["terminationGracePeriodSeconds"])


def wait_scrape(url: str, pod: Pod, name: str, timeout: float = 120) -> str:
    """The first scrape of the daemon at ``url``; fails with its log if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        with suppress(OSError), urllib.request.urlopen(url, timeout=5) as reply:
            return reply.read().decode()
        if time.monotonic() > deadline or not pod.state(name)["Running"]:
            pytest.fail(f"the daemon in {name} serves no metrics:\n{pod.logs(name)}",
                        pytrace=False)
        time.sleep(0.5)


def programs_loaded(ids: set[int]) -> set[int]:
    """Which of the BPF programs ``ids`` the kernel still has (bpftool prog list)."""
    out = subprocess.run(["bpftool", "prog", "list", "--json"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return ids & {program["id"] for program in json.loads(out or "[]")}

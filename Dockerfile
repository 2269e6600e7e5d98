# aiobpf in a container: bcc and aiobpf, installed by the same script as on a host
# (scripts/provision.sh, as in the README).  By default it runs the daemon with the
# configuration at /etc/aiobpf/aiobpf.toml (deploy/aiobpf.toml).
#
#   docker build -t aiobpf .
#   docker run -d --name aiobpf --pid=host --network=host \
#     --cap-drop=ALL --cap-add=SYS_PTRACE --cap-add=BPF --cap-add=PERFMON \
#     --cap-add=SYS_ADMIN --cap-add=SYS_RESOURCE --cap-add=DAC_READ_SEARCH \
#     --security-opt apparmor=unconfined \
#     -v /lib/modules:/lib/modules:ro -v /usr/src:/usr/src:ro -v /run/aiobpf:/run/aiobpf \
#     aiobpf
#
# --pid=host lets the daemon see and read the host's processes.  --network=host keeps
# the metrics on the host's loopback (127.0.0.1:9477, listen in aiobpf.toml); without
# it, mount a configuration with listen = "0.0.0.0:9477" and publish the port.
# Capabilities instead of --privileged: SYS_PTRACE (reading targets' memory,
# /proc/PID/root and map_files), BPF and PERFMON (loading the BPF programs, perf-event
# uprobes; kernel >= 5.8, else SYS_ADMIN instead of both), SYS_RESOURCE (locked
# memory for BPF maps before kernel 5.11), DAC_READ_SEARCH (/proc/PID/map_files, files
# in other containers' roots), SYS_ADMIN (uprobes: since "perf: Revert to requiring
# CAP_SYS_ADMIN for uprobes", kernel 6.16 and stable backports; without it the daemon
# reads memory only, with no step metrics; drop it on kernels that do not need it).
# apparmor=unconfined: the default AppArmor profile forbids reading processes outside
# the container.  A Docker whose default seccomp profile predates CAP_BPF and
# CAP_PERFMON also needs --security-opt seccomp=unconfined.
# /lib/modules and /usr/src give bcc the host's kernel headers; /run/aiobpf holds the
# root-only dump socket, so `aiobpf pstree PID` on the host reaches the daemon.
# One-off commands replace the daemon: `docker run --rm --pid=host ... aiobpf pstree PID`.
# Kubernetes: deploy/kubernetes/daemonset.yaml.
FROM debian:bookworm-slim
WORKDIR /opt/aiobpf
COPY . .
RUN bash scripts/provision.sh --no-sid \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/aiobpf.toml /etc/aiobpf/aiobpf.toml
EXPOSE 9477
ENTRYPOINT ["/opt/aiobpf/.venv/bin/aiobpf"]
CMD ["daemon", "--config", "/etc/aiobpf/aiobpf.toml"]

# aiobpf in a container: bcc and aiobpf, installed by the same script as on a host
# (scripts/provision.sh, as in the README).  By default it runs the daemon with the
# configuration at /etc/aiobpf/aiobpf.toml (deploy/aiobpf.toml).
#
#   make image             (scripts/image.sh: podman, or docker; no registry needed)
#   podman run -d --name aiobpf --pid=host --network=host --user 0 \
#     --cap-drop=ALL --cap-add=SYS_PTRACE --cap-add=SYS_ADMIN \
#     --security-opt apparmor=unconfined --memory=256m -e PYTHONUNBUFFERED=1 \
#     -v /lib/modules:/lib/modules:ro -v /usr/src:/usr/src:ro -v /run/aiobpf:/run/aiobpf \
#     localhost/aiobpf
#
# The flags are the DaemonSet's (deploy/kubernetes/daemonset.yaml says why each
# capability, and which nodes need more); tests/integration/test_image.py reads them
# from the manifest and runs the image so.  --pid=host lets the daemon see and read
# the host's processes.  --network=host keeps the metrics on the host's loopback
# (127.0.0.1:9477, listen in aiobpf.toml); without it, mount a configuration with
# listen = "0.0.0.0:9477" and publish the port.  apparmor=unconfined: the default
# AppArmor profile forbids reading processes outside the container.  The default seccomp
# profile allows bpf() and perf_event_open() to SYS_ADMIN (podman 4.3's to it
# only).  /lib/modules and /usr/src give bcc the host's
# kernel headers; /run/aiobpf holds the root-only dump socket, so `aiobpf pstree PID`
# on the host reaches the daemon.
# One-off commands replace the daemon: `podman run --rm --pid=host ... aiobpf pstree PID`.
FROM debian:bookworm-slim
WORKDIR /opt/aiobpf
# Debian's packages first, a layer of their own: a change to aiobpf's code does not
# download them again.  --container: no kernel headers (the host's are mounted at
# /lib/modules and /usr/src), no tools of a host's shell (git, make, pip, bpftool).
COPY scripts/provision.sh scripts/provision.sh
RUN bash scripts/provision.sh --no-sid --container --packages-only \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY aiobpf aiobpf
# pip fetches aiobpf's dependencies from PyPI, over HTTPS.  The secret pip-ca, when
# the build is given one (scripts/image.sh gives the host's CA bundle), is the CA
# bundle it trusts: that of a host behind a TLS-inspecting proxy.
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && bash scripts/provision.sh --no-sid --container \
    && rm -rf /root/.cache
COPY deploy/aiobpf.toml /etc/aiobpf/aiobpf.toml
EXPOSE 9477
ENTRYPOINT ["/opt/aiobpf/.venv/bin/aiobpf"]
CMD ["daemon", "--config", "/etc/aiobpf/aiobpf.toml"]

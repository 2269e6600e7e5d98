# aiobpf in a container: bcc and aiobpf, installed by the same script as on a host.
#
#   docker build -t aiobpf .
#   docker run --rm --pid=host --privileged \
#     -v /sys/kernel/tracing:/sys/kernel/tracing -v /sys/kernel/debug:/sys/kernel/debug \
#     -v /lib/modules:/lib/modules:ro -v /usr/src:/usr/src:ro \
#     aiobpf pstree PID
#
# --pid=host lets aiobpf see the processes it reads; instead of --privileged it needs
# CAP_SYS_PTRACE (memory reads), CAP_BPF and CAP_PERFMON (BPF capture) and
# CAP_SYS_ADMIN on kernels older than 5.8.  /lib/modules and /usr/src give bcc the
# host's kernel headers.
FROM debian:bookworm-slim
WORKDIR /opt/aiobpf
COPY . .
RUN bash scripts/provision.sh --no-sid \
    && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["/opt/aiobpf/.venv/bin/aiobpf"]
CMD ["--help"]

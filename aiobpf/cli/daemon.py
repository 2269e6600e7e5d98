"""aiobpf daemon and aiobpf exporter: continuous tracing with Prometheus metrics."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from aiobpf import errors
from aiobpf.cli.common import parse_pid
from aiobpf.collector import procfs
from aiobpf.daemon.config import DEFAULT_LISTEN, ConfigError, load
from aiobpf.daemon.web_config import WebConfigError, load_web_config


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help=f"where Prometheus scrapes the metrics (default {DEFAULT_LISTEN}: "
                             "loopback, since metrics name processes and code locations)")
    parser.add_argument("--web-config", metavar="FILE",
                        help="TLS and basic authentication of the metrics endpoint: a "
                             "Prometheus exporter web config (tls_server_config, "
                             "basic_auth_users); the web_config key of the config")
    parser.add_argument("--budget", type=float, metavar="FRACTION",
                        help="tracing overhead allowed, as a fraction of each process's CPU "
                             "time (default 0.01); above a third of it, probes are attached "
                             "in windows planned for a third (room for the estimate's "
                             "error), and step counts between windows are estimated from "
                             "each process's CPU time; 1: no limit, full capture")
    parser.add_argument("--no-bpf", action="store_true",
                        help="no probes at all: only the metrics that memory reads give "
                             "(tasks, depths, sites), at no cost to the step path")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log each process traced or let go, the probes' measured "
                             "cost, and each change of a process's capture plan (full, or "
                             "the share of time in windows); -vv: also every window's "
                             "opening and closing, what each window saw (steps per CPU "
                             "second, which the counts between windows are estimated "
                             "with), and each process's cost estimate when it changes")


def _run(args: argparse.Namespace, pids: list[int] | None) -> int:
    from aiobpf.daemon.service import Daemon, serve

    if os.geteuid() != 0 and not errors.has_capability(errors.CAP_SYS_PTRACE):
        raise errors.PrivilegeError(
            f"aiobpf {args.command} needs root (to read other processes' memory and load "
            "BPF programs)", "run it with sudo, or as the systemd unit / DaemonSet in deploy/")
    for pid in pids or []:
        if not procfs.exists(pid):
            raise errors.ProcessNotFoundError(pid)

    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level,
                        format="aiobpf: %(message)s", stream=sys.stderr)
    if not errors.has_capability(errors.CAP_SYS_PTRACE):
        # root without it (a container that drops it): reading a process takes it,
        # unless the process has the same uid and no capability the daemon lacks
        logging.warning("no CAP_SYS_PTRACE: the processes of other users and containers "
                        "cannot be read, nor traced (grant CAP_SYS_PTRACE)")
    try:
        config = load(getattr(args, "config", None))
        if args.listen:
            config.listen = args.listen
        if args.budget is not None:
            config.budget = args.budget
        if args.no_bpf:
            config.bpf = False
        if getattr(args, "socket", None):
            config.socket = str(args.socket)
        if args.web_config:
            config.web_config = args.web_config
        config.check()
        load_web_config(config.web_config)  # fails now, not after the BPF programs load
    except WebConfigError as exc:
        raise errors.AiobpfError(f"{exc}", "the format is Prometheus exporters' web config: "
                                 "deploy/aiobpf.toml (web_config) says what aiobpf "
                                 "supports") from None
    except ConfigError as exc:
        raise errors.AiobpfError(f"config: {exc}",
                                 "deploy/aiobpf.toml documents every key") from None
    daemon = Daemon(config, pids=pids)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    socket_path = Path(config.socket) if pids is None else None
    try:
        serve(daemon, socket_path)
    except ConfigError as exc:  # the web config changed since it was checked
        daemon.close()
        raise errors.AiobpfError(f"{exc}", "check the web config and start again") from None
    except OSError as exc:
        daemon.close()
        if isinstance(exc, PermissionError):
            raise errors.PrivilegeError(f"cannot serve: {exc}", "run it as root (the dump "
                                        "socket's directory, a port below 1024)") from None
        raise errors.AiobpfError(f"cannot serve: {exc}",
                                 "is another aiobpf daemon or exporter running there? "
                                 "(--listen, and the socket key of the config)") from None
    return 0


class DaemonCommand:
    """Trace every CPython 3.11-3.15 process with asyncio on this host and in its
    containers, as they start, exec and exit, within an overhead budget; serve their
    metrics to Prometheus, and answer `aiobpf ps/pstree PID` over a root-only unix
    socket (those commands ask the daemon first, and read the process themselves when
    no daemon runs, or say in one line why the daemon did not answer; for --capture bpf
    the daemon opens a capture window early if its probes are off, within the budget).

    Which processes: [select] in the config (command-line patterns, users, containers).
    The config file is TOML; deploy/aiobpf.toml documents every key. SIGTERM or Ctrl-C
    stops it and removes every probe.

    examples:
      sudo aiobpf daemon --config /etc/aiobpf/aiobpf.toml
      sudo aiobpf daemon --listen 0.0.0.0:9477 -v
      curl -s localhost:9477/metrics | grep aiobpf_tasks_pending"""

    name = "daemon"
    help = "trace every asyncio process of the host; metrics and dumps"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", type=Path, metavar="FILE",
                            help="TOML config (default: built-in defaults)")
        parser.add_argument("--socket", type=Path, metavar="PATH",
                            help="the dump socket (default /run/aiobpf/aiobpf.sock)")
        _common(parser)

    def run(self, args: argparse.Namespace) -> int:
        return _run(args, None)


class ExporterCommand:
    """Serve Prometheus metrics for the given processes only (see aiobpf daemon for a
    whole host): pending tasks, suspended-stack and await-chain depths, await sites,
    task steps, step durations and loop lag.

    examples:
      sudo aiobpf exporter --pid 1234
      sudo aiobpf exporter --pid 1234 --pid 5678 --listen 127.0.0.1:9478"""

    name = "exporter"
    help = "Prometheus metrics for chosen processes"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--pid", type=parse_pid, action="append", required=True,
                            metavar="PID", help="a process to trace; repeatable")
        _common(parser)

    def run(self, args: argparse.Namespace) -> int:
        return _run(args, args.pid)

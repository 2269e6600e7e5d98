"""The daemon's settings: a TOML file (deploy/aiobpf.toml documents every key)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from aiobpf.exporters.sites import SITE_FRAMES, library_pattern

DEFAULT_LISTEN = "127.0.0.1:9477"
DEFAULT_SOCKET = "/run/aiobpf/aiobpf.sock"


class ConfigError(Exception):
    """The config file cannot be used; the message says which key and why."""


@dataclass
class Selection:
    """Which processes to trace.  Empty lists select everything."""

    cmdline: list[str] = field(default_factory=list)
    exclude_cmdline: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        try:
            self._include = [re.compile(p) for p in self.cmdline]
            self._exclude = [re.compile(p) for p in self.exclude_cmdline]
        except re.error as exc:
            raise ConfigError(f"[select]: bad regular expression: {exc}") from None

    def accepts(self, cmdline: str, uid: int, user: str, container: str) -> bool:
        if self._include and not any(p.search(cmdline) for p in self._include):
            return False
        if any(p.search(cmdline) for p in self._exclude):
            return False
        if self.users and user not in self.users and str(uid) not in self.users:
            return False
        if self.containers:
            name = container or "host"
            return any(name.startswith(c) for c in self.containers)
        return True


@dataclass
class Config:
    listen: str = DEFAULT_LISTEN
    socket: str = DEFAULT_SOCKET
    scan_interval: float = 1.0
    refresh_interval: float = 5.0
    read_budget: float = 0.015   # of one CPU, for the memory reads of every process
    budget: float = 0.01
    probe_cost_us: float | str = "auto"   # "auto": measured (collector/probe_cost.py)
    window: float = 0.2
    top_sites: int = 10
    site_frames: str | list[str] = "application"   # which frames are not await sites
    max_processes: int = 256
    bpf: bool = True
    web_config: str = ""    # TLS and basic auth of the endpoint (aiobpf.daemon.web_config)
    profiles: bool = False      # continuous CPU profiles (aiobpf.daemon.profiling)
    profile_rate: float = 19.0  # their samples per second of each thread's CPU time
    profile_dir: str = "/var/lib/aiobpf/profiles"
    profile_rotate: float = 60.0
    profile_keep: float = 3600.0
    select: Selection = field(default_factory=Selection)

    @property
    def fixed_probe_cost(self) -> float | None:
        """Seconds per captured step when configured, None when measured."""
        return None if self.probe_cost_us == "auto" else float(self.probe_cost_us) * 1e-6

    @property
    def library_frames(self) -> re.Pattern[str] | None:
        """The file names of frames that do not name await sites (``exporters.sites``)."""
        return library_pattern(self.site_frames)

    @property
    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"listen: expected HOST:PORT, got {self.listen!r}")
        return host.strip("[]"), int(port)

    def check(self) -> Config:
        self.listen_address  # noqa: B018 -- validates
        positive = ("scan_interval", "refresh_interval", "window")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive")
        cost = self.probe_cost_us
        if cost != "auto" and (isinstance(cost, str) or cost <= 0):
            raise ConfigError("probe_cost_us: \"auto\" or a positive number of microseconds")
        if not 0 < self.read_budget <= 1:
            raise ConfigError("read_budget: a fraction of one CPU for the memory reads, in (0, 1]")
        if not 0 < self.budget <= 1:
            raise ConfigError("budget: a fraction of the target's CPU time, in (0, 1]")
        if not 0 < self.profile_rate <= 1000:
            raise ConfigError("profile_rate: samples per second of a thread's CPU time, "
                              "above 0 and at most 1000 (profiles = false turns them off)")
        if self.profile_rotate <= 0 or self.profile_keep < self.profile_rotate:
            raise ConfigError("profile_rotate: positive, and profile_keep at least as long")
        if not self.profile_dir.startswith("/"):
            raise ConfigError("profile_dir: an absolute path")
        if self.top_sites < 1 or self.max_processes < 1:
            raise ConfigError("top_sites and max_processes: at least 1")
        self._check_site_frames()
        return self

    def _check_site_frames(self) -> None:
        expected = (", ".join(f'"{name}"' for name in SITE_FRAMES) + " or a list of regular "
                    "expressions matched against frames' file names")
        value = self.site_frames
        if isinstance(value, str):
            if value not in SITE_FRAMES:
                raise ConfigError(f"site_frames: {expected}; got {value!r}")
            return
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise ConfigError(f"site_frames: {expected}")
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"site_frames: bad regular expression {pattern!r}: "
                                  f"{exc}") from None
        try:
            library_pattern(value)
        except re.error as exc:
            raise ConfigError(f"site_frames: the expressions do not combine into one ({exc}): "
                              "write inline flags as (?i:...)") from None


def load(path: Path | None) -> Config:
    """The config at ``path`` (defaults for every key it does not set)."""
    if path is None:
        return Config().check()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = set(data) - {"daemon", "select"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")
    daemon = dict(data.get("daemon", {}))
    known = {f.name: f for f in fields(Config) if f.name != "select"}
    for key, value in daemon.items():
        if key not in known:
            raise ConfigError(f"{path}: [daemon] has no key {key!r}")
        if key == "probe_cost_us" and isinstance(value, int | float | str) \
                and not isinstance(value, bool):
            daemon[key] = float(value) if isinstance(value, int) else value
            continue
        if key == "site_frames":   # a name or a list: checked by Config.check
            continue
        expected = type(getattr(Config(), key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ConfigError(f"{path}: [daemon] {key} must be a {expected.__name__}")
        daemon[key] = value
    select = data.get("select", {})
    sel_keys = {f.name for f in fields(Selection)}
    for key, value in select.items():
        if key not in sel_keys:
            raise ConfigError(f"{path}: [select] has no key {key!r}")
        if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
            raise ConfigError(f"{path}: [select] {key} must be a list of strings")
    selection = Selection(**{k: [str(v) for v in vs] for k, vs in select.items()})
    return Config(**daemon, select=selection).check()

"""The interpreter matrix: every CPython the tests run targets under, in one list.

- ``debian-3.11``: the host's stripped Debian python3.11 (installed by provisioning);
- ``sid-*``: Debian sid's stripped release builds and unstripped debug builds,
  in a debootstrapped root (``AIOBPF_SID_ROOT``) that stands in for a container;
- ``pyenv-*``: pyenv builds with symbols and DWARF, used wherever the machine has them.

Interpreters that provisioning installs are ``required``: when one is missing
the tests that need it fail instead of skipping.  So are the third-party packages it
installs into the sid root (``THIRD_PARTY``): real servers and clients for targets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SID_ROOT = Path(os.environ.get("AIOBPF_SID_ROOT", "/var/cache/aiobpf/sid-root"))


@dataclass(frozen=True)
class Python:
    label: str
    minor: tuple[int, int]
    executable: str            # as seen inside ``root``
    root: Path | None = None   # a chroot, or None for the host
    required: bool = True
    stripped: bool = True

    @property
    def host_executable(self) -> Path:
        return Path(f"{self.root}{self.executable}") if self.root else Path(self.executable)

    def available(self) -> bool:
        return self.host_executable.exists()

    def argv(self, *args: str) -> list[str]:
        """Command line that runs this interpreter (inside its root, when it has one)."""
        base = [self.executable, *args]
        return ["chroot", str(self.root), *base] if self.root else base

    def __str__(self) -> str:
        return self.label


def pyenv_root() -> Path | None:
    env = os.environ.get("PYENV_ROOT")
    if env:
        return Path(env)
    exe = shutil.which("pyenv")
    if exe is None:
        return None
    try:
        return Path(subprocess.run([exe, "root"], capture_output=True, text=True,
                                   check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return None


@cache
def pyenv_pythons() -> tuple[Python, ...]:
    root = pyenv_root()
    if root is None or not (root / "versions").is_dir():
        return ()
    found = []
    for minor in ((3, 11), (3, 12), (3, 13), (3, 14), (3, 15)):
        versions = sorted((root / "versions").glob(f"{minor[0]}.{minor[1]}.*"))
        for version in versions:
            exe = version / "bin" / f"python{minor[0]}.{minor[1]}"
            if exe.exists() and version.name.replace(".", "").isdigit():
                found.append(Python(f"pyenv-{version.name}", minor, str(exe),
                                    required=False, stripped=False))
    return tuple(found)


# Debian's python3-aiohttp, python3-uvloop, python3-httpx (scripts/provision.sh,
# add_to_root): the modules each interpreter imports.  Debian builds aiohttp's C parts
# and uvloop for 3.14 and up only: 3.13 runs aiohttp's pure-Python fallbacks.
THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "sid-3.14": ("aiohttp", "uvloop", "httpx"),
    "sid-3.14d": ("aiohttp", "uvloop", "httpx"),
    "sid-3.13": ("aiohttp", "httpx"),
}


def required_pythons() -> tuple[Python, ...]:
    return (
        Python("debian-3.11", (3, 11), "/usr/bin/python3.11"),
        Python("sid-3.13", (3, 13), "/usr/bin/python3.13", SID_ROOT),
        Python("sid-3.14", (3, 14), "/usr/bin/python3.14", SID_ROOT),
        Python("sid-3.15", (3, 15), "/usr/bin/python3.15", SID_ROOT),
        Python("sid-3.14d", (3, 14), "/usr/bin/python3.14d", SID_ROOT, stripped=False),
        Python("sid-3.15d", (3, 15), "/usr/bin/python3.15d", SID_ROOT, stripped=False),
    )


def all_pythons() -> tuple[Python, ...]:
    """The whole matrix: required interpreters first, then the pyenv builds present."""
    return required_pythons() + pyenv_pythons()


def by_label(label: str) -> Python:
    for python in all_pythons():
        if python.label == label:
            return python
    raise KeyError(label)


OLD_ROOT = Path(os.environ.get("AIOBPF_OLD_ROOT", "/var/cache/aiobpf/bullseye-root"))


def unsupported_pythons() -> tuple[Python, ...]:
    """Interpreters aiobpf must refuse by name: Debian 11's python3.9 (provisioned, in a
    bullseye root) and pyenv's 3.10 builds where the machine has them."""
    out = [Python("bullseye-3.9", (3, 9), "/usr/bin/python3.9", OLD_ROOT)]
    root = pyenv_root()
    if root is not None:
        for version in sorted((root / "versions").glob("3.10.*")):
            out.append(Python(f"pyenv-{version.name}", (3, 10),
                              str(version / "bin" / "python3.10"), required=False,
                              stripped=False))
    return tuple(out)

"""Dump requests over the daemon's root-only unix socket.

A request is one JSON line: ``{"pid": PID, "format": "tree", "capture": "auto",
"window": 0.3}``.  The reply is one JSON line: ``{"output": TEXT, "notes": [...]}``
and, when the command fails, ``"error"``, ``"hint"`` and ``"exit_code"``; or
``{"fallback": WHY}`` when the daemon cannot answer (it does not trace that process,
or ``capture: bpf`` was asked and it has no probes for it, BPF is off, or its budget
refuses a window): the client says WHY in one line and reads the process itself.

Dumps reveal code names, paths and task names: the socket's directory and file are
root-only (0700/0600), and the daemon also checks the peer's uid (SO_PEERCRED).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiobpf.errors import EXIT_PERMISSION, EXIT_USAGE

MAX_REQUEST = 4096
CLIENT_TIMEOUT_S = 300.0   # a dump of a million tasks takes about a minute

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class DumpServer:
    """Answers dump requests one at a time (dumps are rare and memory-heavy)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)   # never chmod a directory not ours
        if path.exists():
            if answers(path):
                raise OSError(f"another aiobpf daemon answers on {path}")
            path.unlink()                 # a socket left by a daemon that was killed
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self._thread = threading.Thread(target=self._serve, name="aiobpf-dumps", daemon=True)
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self._answer(conn)
                except OSError:
                    continue  # the client went away

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        while b"\n" not in data and len(data) < MAX_REQUEST:
            chunk = conn.recv(MAX_REQUEST)
            if not chunk:
                break
            data += chunk
        reply: dict[str, Any]
        if _peer_uid(conn) not in (0, os.geteuid()):
            reply = {"error": "dumps are for root only", "exit_code": EXIT_PERMISSION}
        else:
            try:
                request = json.loads(data)
                if not isinstance(request, dict) or not isinstance(request.get("pid"), int):
                    raise ValueError("no pid")
            except ValueError:
                reply = {"error": "bad request", "exit_code": EXIT_USAGE}
            else:
                reply = self.handler(request)
        conn.settimeout(CLIENT_TIMEOUT_S)
        conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def answers(path: Path) -> bool:
    """Does a daemon listen on ``path``?"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def request(path: Path, message: dict[str, Any]) -> dict[str, Any] | None:
    """Ask the daemon at ``path``: its reply (``"fallback"`` in it when the daemon
    cannot answer), or None when no daemon answers there (or may not be asked by this
    user); either way the caller then reads the process itself."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CLIENT_TIMEOUT_S)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps(message).encode() + b"\n")
        chunks = []
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError, PermissionError, NotADirectoryError):
        return None
    except OSError:
        return None
    finally:
        sock.close()
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None

"""Dump requests over the daemon's root-only unix socket.

A request is one JSON line: ``{"pid": PID, "format": "tree", "capture": "auto",
"window": 0.3}``.  The reply is one JSON line: ``{"output": TEXT, "notes": [...]}``
and, when the command fails, ``"error"``, ``"hint"`` and ``"exit_code"``; or
``{"fallback": WHY}`` when the daemon cannot answer (it does not trace that process,
or ``capture: bpf`` was asked and it has no probes for it, BPF is off, or its budget
refuses a window): the client says WHY in one line and reads the process itself.

A profile request (``aiobpf profile``) carries ``"profile": {"mode": "cpu", "rate":
HZ or null, "duration": S}``: the daemon answers with its continuous profile's
samples of the next S seconds (``{"profile": DOCUMENT, "notes": [...]}``), on a
thread of its own (at most ``MAX_PROFILES`` at once: dumps are not held up); the
client ends it sooner by shutting down its side of the connection (Ctrl-C).

Dumps and profiles reveal code names, paths and task names: the socket's directory
and file are root-only (0700/0600), and the daemon also checks the peer's uid
(SO_PEERCRED): root, or the daemon's own user.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiobpf.errors import EXIT_PERMISSION, EXIT_USAGE

MAX_REQUEST = 4096
CLIENT_TIMEOUT_S = 300.0   # a dump of a million tasks takes about a minute
MAX_PROFILES = 4           # profile requests answered at once (each waits its duration)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
# A profile request, and a callable that says whether the client ended it early.
ProfileHandler = Callable[[dict[str, Any], Callable[[], bool]], dict[str, Any]]


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class DumpServer:
    """Answers dump requests one at a time (dumps are rare and memory-heavy)."""

    def __init__(self, path: Path, handler: Handler,
                 profile_handler: ProfileHandler | None = None) -> None:
        self.path = path
        self.handler = handler
        self.profile_handler = profile_handler
        self._profiles = threading.BoundedSemaphore(MAX_PROFILES)
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
            try:
                request = self._request(conn)
                if isinstance(request, dict) and "profile" in request:
                    self._profile(conn, request)
                    continue
                with conn:
                    _reply(conn, request[0] if isinstance(request, tuple)
                           else self.handler(request))
            except OSError:
                conn.close()   # the client went away

    def _request(self, conn: socket.socket) -> dict[str, Any] | tuple[dict[str, Any]]:
        """The request, or (the reply that refuses it,): peers other than root and the
        daemon's user are refused, whatever they sent."""
        conn.settimeout(10)
        data = b""
        while b"\n" not in data and len(data) < MAX_REQUEST:
            chunk = conn.recv(MAX_REQUEST)
            if not chunk:
                break
            data += chunk
        if _peer_uid(conn) not in (0, os.geteuid()):
            return ({"error": "dumps and profiles are for root only",
                     "exit_code": EXIT_PERMISSION},)
        try:
            request = json.loads(data)
            if not isinstance(request, dict) or not isinstance(request.get("pid"), int):
                raise ValueError("no pid")
        except ValueError:
            return ({"error": "bad request", "exit_code": EXIT_USAGE},)
        return request

    def _profile(self, conn: socket.socket, request: dict[str, Any]) -> None:
        """Answer a profile request on a thread of its own (it lasts its duration)."""
        if self.profile_handler is None or not self._profiles.acquire(blocking=False):
            with conn:
                _reply(conn, {"fallback": "the daemon serves no profiles" if
                              self.profile_handler is None else
                              f"the daemon is answering {MAX_PROFILES} profile requests"})
            return
        handler = self.profile_handler

        def answer() -> None:
            try:
                with conn:
                    try:
                        reply = handler(request, lambda: _ended(conn))
                    except Exception as exc:   # said to the client, never a dead thread
                        reply = {"fallback": f"the daemon failed: {type(exc).__name__}"}
                    _reply(conn, reply)
            except OSError:
                pass   # the client went away
            finally:
                self._profiles.release()

        threading.Thread(target=answer, name="aiobpf-profile", daemon=True).start()

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _reply(conn: socket.socket, reply: dict[str, Any]) -> None:
    conn.settimeout(CLIENT_TIMEOUT_S)
    conn.sendall(json.dumps(reply).encode() + b"\n")


def _ended(conn: socket.socket) -> bool:
    """Has the client shut down its side (or gone)?  It sends nothing after its request."""
    ready, _, _ = select.select([conn], [], [], 0)
    if not ready:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


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


def request(path: Path, message: dict[str, Any], timeout_s: float = CLIENT_TIMEOUT_S,
            stopped: Callable[[], bool] = lambda: False) -> dict[str, Any] | None:
    """Ask the daemon at ``path``: its reply (``"fallback"`` in it when the daemon
    cannot answer), or None when no daemon answers there (or may not be asked by this
    user); either way the caller then reads the process itself.  Once ``stopped()``,
    this side of the connection is shut down: a profile request ends sooner."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CLIENT_TIMEOUT_S)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps(message).encode() + b"\n")
        chunks = []
        sock.settimeout(0.2)
        deadline, shut = time.monotonic() + timeout_s, False
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                if stopped() and not shut:
                    sock.shutdown(socket.SHUT_WR)
                    shut = True
                continue
            if not chunk:
                break
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

"""The metrics endpoint: prometheus_client's WSGI app (formats, content negotiation,
compression) behind a cache, on a threading WSGI server with bounded resources.

Whoever can reach the port is untrusted (the DaemonSet listens on all of the pod's
addresses).  So: at most ``MAX_CONNECTIONS`` connections at once and ``MAX_PER_PEER``
from one address (more are closed at once), one thread each; each connection has
``REQUEST_TIMEOUT_S`` in all for its TLS handshake, its request (at most
``MAX_REQUEST_BYTES``) and the reply, after which it is shut down whatever it is doing;
one request per connection.  TLS and basic authentication come from a web config file
(aiobpf.daemon.web_config).  prometheus_client's own ``start_http_server`` is not used: it
does the TLS handshake in its accepting thread, without a timeout, so one silent client
would stop every scrape.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from aiobpf.daemon.web_config import BasicAuth, WebConfig
from aiobpf.exporters import prometheus
from aiobpf.exporters.metrics import OWN_PROCESS_NAMESPACE
from aiobpf.exporters.prometheus import MetricsCollector
from aiobpf.exporters.state import DaemonState

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
MAX_PER_PEER = 8               # loopback is one address for every local client
REQUEST_TIMEOUT_S = 10.0
MAX_REQUEST_BYTES = 16 * 1024   # request line and headers
CACHED_VARIANTS = 8             # renderings kept per state (formats, encodings, queries)


class Rejections:
    """Connections and requests the endpoint turned away, by reason (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class RejectionsCollector(Collector):
    def __init__(self, rejections: Rejections) -> None:
        self._rejections = rejections

    def collect(self) -> Iterable[Metric]:
        family = prometheus.family("rejected")
        for reason, count in sorted(self._rejections.counts().items()):
            family.add_metric([reason], count)
        yield family


class RequestTooLarge(Exception):
    pass


class _CappedReader:
    """A request's input, refusing to give more than ``limit`` bytes in all."""

    def __init__(self, raw: Any, limit: int) -> None:
        self._raw, self._left = raw, limit

    def _take(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            raise RequestTooLarge
        return data

    def readline(self, size: int = -1) -> bytes:
        want = self._left + 1 if size < 0 else min(size, self._left + 1)
        return self._take(self._raw.readline(want))

    def read(self, size: int = -1) -> bytes:
        want = self._left + 1 if size < 0 else min(size, self._left + 1)
        return self._take(self._raw.read(want))

    def close(self) -> None:
        self._raw.close()


class _LogStream(io.TextIOBase):
    """Where wsgiref writes its errors: the daemon's debug log, not a traceback on stderr."""

    def write(self, text: str) -> int:
        if text.strip():
            log.debug("metrics endpoint: %s", text.rstrip())
        return len(text)


class _Handler(WSGIRequestHandler):
    server: _Server

    def setup(self) -> None:
        # Each read and write has a timeout too, a backstop to the deadline.
        self.request.settimeout(REQUEST_TIMEOUT_S + 2)
        if self.server.tls is not None:
            wrapped = self.server.tls.wrap_socket(self.request, server_side=True,
                                                  do_handshake_on_connect=False)
            self.request = wrapped
            self.server.track(wrapped)
            try:
                wrapped.do_handshake()
            except (OSError, ssl.SSLError):
                self.server.rejections.add("tls_handshake")
                raise
        super().setup()
        self.rfile = _CappedReader(self.rfile, MAX_REQUEST_BYTES)  # type: ignore[assignment]

    def handle(self) -> None:
        try:
            super().handle()
        except RequestTooLarge:
            self.server.rejections.add("too_large")
            self.close_connection = True

    def get_stderr(self) -> _LogStream:  # type: ignore[override]
        return _LogStream()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the daemon's log


class _Tracked:
    """A connection being served, and when its time is up."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = time.monotonic() + REQUEST_TIMEOUT_S
        self.expired = False


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None,
                 rejections: Rejections) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.tls, self.rejections = tls, rejections
        self._lock = threading.Lock()
        self._per_peer: Counter[str] = Counter()
        self._active: dict[int, _Tracked] = {}
        super().__init__((host, port), _Handler)

    # -- admission: a thread per connection, within bounds --------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        peer = str(client_address[0])
        with self._lock:
            if sum(self._per_peer.values()) >= MAX_CONNECTIONS:
                reason = "too_many_connections"
            elif self._per_peer[peer] >= MAX_PER_PEER:
                reason = "too_many_from_peer"
            else:
                reason = ""
                self._per_peer[peer] += 1
        if reason:
            self.rejections.add(reason)
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:          # no thread could be started
            self._release(peer)
            self.shutdown_request(request)

    def _refuse(self, request: socket.socket) -> None:
        """Close at once; a plain-HTTP client is told why if that costs no waiting."""
        if self.tls is None:
            try:
                request.setblocking(False)
                request.send(b"HTTP/1.0 503 Service Unavailable\r\nConnection: close\r\n"
                             b"Content-Length: 0\r\n\r\n")
            except OSError:
                pass
        self.shutdown_request(request)

    def _release(self, peer: str) -> None:
        with self._lock:
            self._per_peer[peer] -= 1
            if self._per_peer[peer] <= 0:
                del self._per_peer[peer]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        me = threading.get_ident()
        with self._lock:
            self._active[me] = _Tracked(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                tracked = self._active.pop(me)
            if tracked.sock is not request:     # the TLS socket wrapping it
                tracked.sock.close()
            self._release(str(client_address[0]))

    def track(self, sock: socket.socket) -> None:
        """The calling connection's thread now talks through ``sock`` (its TLS socket)."""
        with self._lock:
            self._active[threading.get_ident()].sock = sock

    # -- time: every connection is shut down at its deadline -------------------------------
    def service_actions(self) -> None:
        """Called by serve_forever at least twice a second: end overdue connections.
        A shutdown wakes the connection's thread from any read, write or handshake."""
        now = time.monotonic()
        with self._lock:
            overdue = [t for t in self._active.values() if t.deadline <= now and not t.expired]
            for tracked in overdue:
                tracked.expired = True
        for tracked in overdue:
            self.rejections.add("timeout")
            # socket.socket's own shutdown, also for a TLS socket: SSLSocket.shutdown
            # would drop its SSL object under the feet of the thread using it.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(tracked.sock, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        log.debug("metrics endpoint: connection from %s: %s", client_address[0],
                  exc.__class__.__name__ + (f": {exc}" if str(exc) else ""))


class _Fixed(Collector):
    """Metric families collected once, encoded as often as asked."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics

    describe = collect


class CachedMetrics:
    """prometheus_client's WSGI app over the metrics collected once per published state
    (by its generation), and rendered once per variant (format, compression, query):
    a scrape storm costs one collection per tick, not one per scrape.  Every variant of
    a generation shows the same samples (aiobpf's own process metrics included), the
    collection reads the very state whose generation keys it, and a generation older
    than the one collected last is never collected again: a scrape never shows an older
    state than one before it."""

    def __init__(self, state: Callable[[], DaemonState], registry: CollectorRegistry) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._collecting = DaemonState()
        registry.register(MetricsCollector(lambda: self._collecting))
        self._source = registry
        self._generation = -1
        self._app: Callable = make_wsgi_app(CollectorRegistry())
        self._cache: dict[tuple, tuple[str, list, bytes]] = {}

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        state = self.state()
        try:
            content_type = choose_encoder(environ.get("HTTP_ACCEPT") or "")[1]
        except Exception:  # prometheus_client fails on some malformed versions
            start_response("406 Not Acceptable", [("Content-Type", "text/plain")])
            return [b"unsupported Accept header\n"]
        key = (environ.get("REQUEST_METHOD"), environ.get("PATH_INFO") == "/favicon.ico",
               content_type, gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")),
               environ.get("QUERY_STRING", ""))
        with self._lock:
            if state.generation > self._generation:
                self._collecting = state
                collected = CollectorRegistry()
                collected.register(_Fixed(list(self._source.collect())))
                self._app = make_wsgi_app(collected)
                self._cache.clear()
                self._generation = state.generation
            hit = self._cache.get(key)
            if hit is None:
                said: list = []
                body = b"".join(self._app(environ, lambda status, headers, *_:
                                          said.extend((status, headers))))
                hit = (said[0], said[1], body)
                if len(self._cache) < CACHED_VARIANTS:
                    self._cache[key] = hit
        start_response(hit[0], hit[1])
        return [hit[2]]


class Guarded:
    """The app behind basic authentication (when configured), answering 500 with a line
    in the log, never a traceback, when rendering fails."""

    def __init__(self, app: Callable, auth: BasicAuth | None, rejections: Rejections) -> None:
        self.app, self.auth, self.rejections = app, auth, rejections

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        if self.auth is not None and not self.auth.accepts(environ.get("HTTP_AUTHORIZATION"),
                                                           timeout=REQUEST_TIMEOUT_S):
            self.rejections.add("unauthorized")
            start_response("401 Unauthorized", [
                ("WWW-Authenticate", 'Basic realm="aiobpf"'),
                ("Content-Type", "text/plain; charset=utf-8")])
            return [b"Unauthorized\n"]
        try:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        except Exception as exc:
            log.warning("metrics endpoint: rendering failed: %s: %s",
                        exc.__class__.__name__, exc)
            start_response("500 Internal Server Error",
                           [("Content-Type", "text/plain; charset=utf-8")], sys.exc_info())
            return [b"aiobpf: rendering the metrics failed; see the daemon's log\n"]


def own_metrics(rejections: Rejections) -> CollectorRegistry:
    """A registry of what the endpoint says about aiobpf's own process (besides the
    daemon's state): CPU, memory and descriptors, and the requests it turned away."""
    registry = CollectorRegistry()
    ProcessCollector(namespace=OWN_PROCESS_NAMESPACE, registry=registry)
    registry.register(RejectionsCollector(rejections))
    return registry


def start_metrics_server(host: str, port: int, state: Callable[[], DaemonState],
                         web: WebConfig | None = None) -> WSGIServer:
    """Serve /metrics from ``state`` (and aiobpf's own process metrics) in a thread,
    with TLS and basic authentication when ``web`` says so."""
    web = web or WebConfig()
    rejections = Rejections()
    app = Guarded(CachedMetrics(state, own_metrics(rejections)), web.auth, rejections)
    server = _Server(host, port, web.tls, rejections)
    server.set_app(app)
    threading.Thread(target=server.serve_forever, name="aiobpf-metrics", daemon=True).start()
    return server

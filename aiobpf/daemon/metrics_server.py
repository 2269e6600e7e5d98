"""The metrics endpoint: prometheus_client's WSGI app (formats, content negotiation,
compression) behind a cache, on a threading WSGI server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.process_collector import ProcessCollector

from aiobpf.exporters.prometheus import DaemonState, MetricsCollector


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the daemon's log


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class CachedMetrics:
    """prometheus_client's WSGI app, rendered at most once per published state (and
    format): a scrape storm costs one rendering per tick, not one per scrape."""

    def __init__(self, app: Callable, version: Callable[[], object]) -> None:
        self.app, self.version = app, version
        self._lock = threading.Lock()
        self._cache: dict[tuple, tuple[str, list, bytes]] = {}

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        key = (id(self.version()), environ.get("PATH_INFO"), environ.get("QUERY_STRING"),
               environ.get("HTTP_ACCEPT"), environ.get("HTTP_ACCEPT_ENCODING"))
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                said: list = []
                body = b"".join(self.app(environ, lambda status, headers, *_:
                                         said.extend((status, headers))))
                hit = (said[0], said[1], body)
                self._cache = {k: v for k, v in self._cache.items() if k[0] == key[0]}
                self._cache[key] = hit
        start_response(hit[0], hit[1])
        return [hit[2]]


def start_metrics_server(host: str, port: int, state: Callable[[], DaemonState]
                         ) -> WSGIServer:
    """Serve /metrics from ``state`` (and aiobpf's own process metrics) in a thread."""
    registry = CollectorRegistry()
    registry.register(MetricsCollector(state))
    ProcessCollector(namespace="aiobpf", registry=registry)
    server_class = type("_Bound", (_Server,), {
        "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    app = CachedMetrics(make_wsgi_app(registry), state)
    server: WSGIServer = make_server(host, port, app, server_class=server_class,
                                     handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="aiobpf-metrics", daemon=True).start()
    return server

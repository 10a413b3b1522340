"""The supervisor's HTTP endpoint (DESIGN §9): /metrics of every process, /health, /ready, /status, /dlq."""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


def serve(host: str, port: int, snapshot: Callable[[], dict],
          dlq: Callable[[], dict] | None = None) -> ThreadingHTTPServer:
    """Start serving in a daemon thread (safe: workers are spawned, never forked)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from relay.metrics import registry

    reg = registry()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(reg), CONTENT_TYPE_LATEST)
            elif path == "/health":
                self._send(200, b"ok\n", "text/plain")
            elif path == "/ready":
                ready = snapshot().get("ready", False)
                self._send(200 if ready else 503, b"ready\n" if ready else b"not ready\n", "text/plain")
            elif path == "/status":
                status = {**snapshot(), "metrics_port": self.server.server_address[1]}
                self._send(200, json.dumps(status, default=str, indent=1).encode(), "application/json")
            elif path == "/dlq" and dlq is not None:  # dead-letter stats (read-only: nothing mutates over HTTP)
                self._send(200, json.dumps(dlq(), default=str, indent=1).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args) -> None:  # scrapes every few seconds would flood the log
            log.debug(fmt, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server

"""A real webhook receiver, and what the webhook tests send and allow."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

#: The only network the tests' deliveries may reach: the receiver's loopback.
LOCAL = [ipaddress.ip_network("127.0.0.1/32")]
#: A webhook body to sign, verify and deliver.
BODY = b'{"job_id":"x","status":"completed"}'


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request. Paths choose
    the answer: ``/ok``, ``/fail`` (500), ``/flaky`` (500 twice, then 200),
    ``/redirect`` (302 to ``/target``), ``/slow`` (answers after 3 s),
    ``/big`` (200 with a 1 MiB body); a path's suffix after ``-`` makes it
    distinct (``/ok-2``)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.received.append(
                        Received(self.path, dict(self.headers.items()), body, time.time())
                    )
                    seen = sum(1 for r in receiver.received if r.path == self.path)
                kind = self.path.lstrip("/").split("-")[0].split("?")[0]
                payload = b"secret internal answer"
                headers: dict[str, str] = {}
                if kind == "ok" or kind == "target" or (kind == "flaky" and seen > 2):
                    code = 200
                elif kind == "redirect":
                    code, headers = 302, {"Location": "/target"}
                elif kind == "slow":
                    time.sleep(3)
                    code = 200
                elif kind == "big":
                    code, payload = 200, b"x" * (1 << 20)
                else:
                    code = 500
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except OSError:
                    pass  # the caller stopped reading: it may

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a caller that timed out and hung up is expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait(self, path: str, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.at(path)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{path}: {len(self.at(path))} requests, expected {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.close()

"""A real HAProxy (Debian's) in front of API instances, run as the current
user on a spare port, its configuration written by the test: health checks
on ``/readyz`` (fast ``inter``, ``fall 1``), redispatch and retries, so a
server that drains is taken out before it stops accepting and a connection
refused meanwhile is retried on another server."""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.services import missing
from tests.support.stack import free_port

#: How often HAProxy asks each server's /readyz (a drain delay of the API
#: must be well over inter x fall, plus the time a check takes).
CHECK_INTER_MS = 100


def haproxy_binary() -> str:
    """HAProxy's path (Debian puts it in /usr/sbin, off a user's PATH)."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        missing("HAProxy is not installed (make haproxy, or apt-get install haproxy)")
    return found


def haproxy_config(port: int, servers: dict[str, int], stats_socket: Path) -> str:
    """The configuration: one frontend on ``port``, one backend of ``servers``
    (name: port on 127.0.0.1)."""
    lines = [
        "global",
        "    maxconn 4096",
        f"    stats socket {stats_socket} mode 600 level admin",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-keep-alive 30s",
        # A check is slower than inter under load: give it its own bound.
        "    timeout check 5s",
        # A connection refused (a server between two processes) or closed
        # without an answer (a kept-alive connection closed as a request
        # went out) is tried again, on another server. Clients send an
        # Idempotency-Key with every submission, so a retried POST is safe.
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
        "",
        "frontend api",
        f"    bind 127.0.0.1:{port}",
        "    default_backend apis",
        "",
        "backend apis",
        "    balance roundrobin",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
    ]
    lines += [
        f"    server {name} 127.0.0.1:{server_port} check inter {CHECK_INTER_MS}ms fall 1 rise 2"
        for name, server_port in servers.items()
    ]
    return "\n".join(lines) + "\n"


class HAProxy:
    """HAProxy in the foreground (``-db``), its state read from its stats socket."""

    def __init__(self, servers: dict[str, int], folder: Path) -> None:
        self.binary = haproxy_binary()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.socket_path = folder / "haproxy.sock"
        self.config_path = folder / "haproxy.cfg"
        self.config_path.write_text(haproxy_config(self.port, servers, self.socket_path))
        self.log_path = folder / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = subprocess.run(
            [self.binary, "-c", "-f", str(self.config_path)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.server_states()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"HAProxy did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def command(self, line: str) -> str:
        """One command on the stats socket, its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, str]:
        """Each server's status as HAProxy sees it (``UP``, ``DOWN``, ...)."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "apis" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_state(self, server: str, state: str, timeout: float = 30) -> float:
        """Wait until HAProxy sees ``server`` in ``state``; the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = self.server_states().get(server, "")
            if seen.split(" ")[0] == state:
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"HAProxy never saw {server} {state} (last: {seen})")

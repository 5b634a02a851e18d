"""An HTTPS image server on 127.0.0.1 with a self-signed certificate, and
images with the awkward properties real ones have (EXIF orientation, ICC
profiles, transparency).

A worker trusts the server's certificate through OpenSSL's ``SSL_CERT_FILE``
(the fixture sets it for this process; a stack passes it to its workers), and
reaches 127.0.0.1 through ``SLIDEFARM_FETCH_ALLOW``.
"""

from __future__ import annotations

import io
import shutil
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.services import unavailable

#: The network the tests' image fetches may reach.
FETCH_ALLOW = "127.0.0.1/32"


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for IP 127.0.0.1 and its key, made by the openssl CLI."""
    if shutil.which("openssl") is None:
        unavailable("openssl", FileNotFoundError("openssl not installed"))
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class ImageServer:
    """Serves ``files`` (path -> bytes) over HTTPS and counts every request by
    path. Other paths: ``/missing`` 404, ``/broken`` 500, ``/hop-N`` redirects
    to ``/hop-(N-1)`` and ``/hop-0`` to ``/logo.png``, ``/private`` redirects to
    ``https://127.0.0.2/...``, ``/endless`` streams zeros without end,
    ``/slow`` answers after 3 s."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.cert = cert
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                with server.lock:
                    server.hits[path] = server.hits.get(path, 0) + 1
                if path in server.files:
                    return self._answer(200, server.files[path], "image/jpeg")
                if path.startswith("/hop-"):
                    left = int(path.removeprefix("/hop-"))
                    where = "/logo.png" if left == 0 else f"/hop-{left - 1}"
                    return self._answer(302, b"", location=where)
                if path == "/private":
                    return self._answer(302, b"", location="https://127.0.0.2/logo.png")
                if path == "/broken":
                    return self._answer(500, b"oops")
                if path == "/slow":
                    time.sleep(3)
                    return self._answer(200, b"late")
                if path == "/endless":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    try:
                        while True:
                            self.wfile.write(b"\x00" * 65536)
                    except OSError:
                        return
                return self._answer(404, b"not here")

            def _answer(
                self, code: int, body: bytes, ctype: str = "text/plain", location: str = ""
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if location:
                    self.send_header("Location", location)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def image_server(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ImageServer]:
    """An HTTPS image server on 127.0.0.1 this process trusts (``SSL_CERT_FILE``)."""
    cert, key = self_signed_cert(tmp_path_factory.mktemp("tls"))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    server = ImageServer(cert, key)
    try:
        yield server
    finally:
        server.close()


def encoded(image: Image.Image, fmt: str, **params: Any) -> bytes:
    """``image`` saved in Pillow format ``fmt``."""
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def exif_rotated_jpeg(size: tuple[int, int] = (80, 40)) -> bytes:
    """A landscape JPEG (left half red, right half blue) tagged Orientation=6:
    a viewer shows it turned 90 degrees clockwise, upright, red on top."""
    image = Image.new("RGB", size, (220, 30, 30))
    image.paste((30, 30, 220), (size[0] // 2, 0, size[0], size[1]))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(image, "JPEG", quality=95, exif=exif.tobytes())


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _tag_xyz(xyz: tuple[float, float, float]) -> bytes:
    return b"XYZ " + b"\0" * 4 + b"".join(_s15(v) for v in xyz)


def _tag_curve(gamma: float) -> bytes:
    return b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def display_p3_like_profile() -> bytes:
    """A minimal ICC v2 RGB matrix/TRC profile with Display P3's primaries
    (D50-adapted) and a gamma of 2.2: wide-gamut colour, as a phone tags it."""
    tags = [
        (b"wtpt", _tag_xyz((0.9642, 1.0, 0.8249))),
        (b"rXYZ", _tag_xyz((0.5151, 0.2412, -0.0011))),
        (b"gXYZ", _tag_xyz((0.2920, 0.6922, 0.0419))),
        (b"bXYZ", _tag_xyz((0.1571, 0.0666, 0.7841))),
        (b"rTRC", _tag_curve(2.2)),
        (b"gTRC", _tag_curve(2.2)),
        (b"bTRC", _tag_curve(2.2)),
        (b"desc", b"desc" + b"\0" * 4 + struct.pack(">I", 8) + b"P3 test\0" + b"\0" * 79),
        (b"cprt", b"text" + b"\0" * 4 + b"none\0\0\0\0"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        while (offset + len(data)) % 4:
            data += b"\0"
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + bytes([2, 0x10, 0, 0])
        + b"mntr"
        + b"RGB "
        + b"XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"APPL"
        + b"\0" * 4
        + b"\0" * 8
        + b"\0" * 8
        + b"\0" * 4
        + _s15(0.9642)
        + _s15(1.0)
        + _s15(0.8249)
        + b"\0" * 4
        + b"\0" * 16
        + b"\0" * 28
    )
    assert len(header) == 128, len(header)
    return header + struct.pack(">I", len(tags)) + table + data

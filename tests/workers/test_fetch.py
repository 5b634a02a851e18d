"""Image URLs fetched over real HTTPS (a local server with a self-signed
certificate the test trusts): the SSRF guard, redirects, size and time limits."""

from __future__ import annotations

import ipaddress
import re
import time

import pytest

from tests.support.assets import image_bytes
from tests.support.images import FETCH_ALLOW, ImageServer
from workers.fetch import MAX_REDIRECTS, ImageFetchFailed, ImageRefused, fetch_image

ALLOW = [ipaddress.ip_network(FETCH_ALLOW)]
LOGO = image_bytes("PNG")


def get(url: str, **kw: object) -> bytes:
    options: dict[str, object] = {"allow": ALLOW, "timeout": 5.0, "max_bytes": 1 << 20}
    options.update(kw)
    return fetch_image(url, what="slide 1's image", **options)  # type: ignore[arg-type]


def test_an_allowed_https_url_is_fetched(image_server: ImageServer) -> None:
    image_server.files["/logo.png"] = LOGO
    assert get(image_server.url("/logo.png")) == LOGO
    assert image_server.hits["/logo.png"] == 1


def test_loopback_is_refused_without_the_allow_list(image_server: ImageServer) -> None:
    image_server.files["/logo.png"] = LOGO
    with pytest.raises(
        ImageRefused, match=re.escape("slide 1's image: refused: 127.0.0.1 is loopback")
    ):
        get(image_server.url("/logo.png"), allow=[])
    assert image_server.hits == {}  # never connected


def test_only_https_is_fetched() -> None:
    with pytest.raises(ImageRefused, match="only https"):
        get("http://127.0.0.1:1/logo.png")


def test_redirects_are_followed_up_to_the_limit(image_server: ImageServer) -> None:
    image_server.files["/logo.png"] = LOGO
    assert get(image_server.url(f"/hop-{MAX_REDIRECTS - 1}")) == LOGO
    with pytest.raises(ImageRefused, match=f"more than {MAX_REDIRECTS} redirects"):
        get(image_server.url(f"/hop-{MAX_REDIRECTS}"))


def test_each_redirect_is_checked_by_the_guard(image_server: ImageServer) -> None:
    # 127.0.0.2 is loopback and outside the allow-list (127.0.0.1/32).
    with pytest.raises(ImageRefused, match=re.escape("127.0.0.2 is loopback")):
        get(image_server.url("/private"))


def test_http_errors_are_refused_and_5xx_may_be_retried(image_server: ImageServer) -> None:
    with pytest.raises(ImageRefused, match="HTTP 404"):
        get(image_server.url("/missing"))
    with pytest.raises(ImageFetchFailed, match="HTTP 500"):
        get(image_server.url("/broken"))


def test_a_body_past_the_cap_stops_reading(image_server: ImageServer) -> None:
    started = time.monotonic()
    with pytest.raises(ImageRefused, match="reading stopped"):
        get(image_server.url("/endless"), max_bytes=256 * 1024)
    assert time.monotonic() - started < 3
    image_server.files["/logo.png"] = LOGO
    with pytest.raises(ImageRefused, match="SLIDEFARM_MAX_IMAGE_ASSET_BYTES"):
        get(image_server.url("/logo.png"), max_bytes=len(LOGO) - 1)  # its Content-Length


def test_the_time_limit_covers_the_whole_fetch(image_server: ImageServer) -> None:
    started = time.monotonic()
    with pytest.raises(ImageFetchFailed, match="timed out after 1 s"):
        get(image_server.url("/slow"), timeout=1.0)
    assert time.monotonic() - started < 2.5


def test_an_untrusted_certificate_is_refused(
    image_server: ImageServer, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("SSL_CERT_DIR", "/nonexistent")
    image_server.files["/logo.png"] = LOGO
    with pytest.raises(ImageRefused, match="TLS error"):
        get(image_server.url("/logo.png"))


def test_a_host_that_does_not_resolve_may_be_retried() -> None:
    with pytest.raises(ImageFetchFailed, match="does not resolve"):
        get("https://no-such-host.invalid/logo.png")

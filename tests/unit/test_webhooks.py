"""Webhooks without a service: signatures, the SSRF guard's checks of a
callback URL, the retry schedule and the README's verification recipe."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest

from core.signing import sign, verify
from core.urls import UnsafeCallback, check_callback_url
from storage.deliveries import retry_delay
from tests.support import ROOT
from tests.support.webhooks import BODY, LOCAL

# -- signatures --------------------------------------------------------------------


SECRET = "whsec_test_secret"


def test_a_signature_verifies_and_a_tampered_body_or_old_timestamp_does_not() -> None:
    now = time.time()
    header = sign(BODY, [SECRET], timestamp=int(now))
    assert header.startswith(f"t={int(now)},v1=") and header.count("v1=") == 1
    assert verify(header, BODY, SECRET, now=now)
    assert not verify(header, BODY.replace(b"completed", b"failed"), SECRET, now=now)
    assert not verify(header, BODY + b" ", SECRET, now=now)
    assert not verify(header, BODY, "whsec_another", now=now)
    old = sign(BODY, [SECRET], timestamp=int(now) - 301)
    assert not verify(old, BODY, SECRET, now=now)
    assert verify(old, BODY, SECRET, now=now, tolerance=400)
    # The timestamp is signed too: moving it forward breaks the signature.
    forged = header.replace(f"t={int(now)}", f"t={int(now) + 5}")
    assert not verify(forged, BODY, SECRET, now=now)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "t=",
        "v1=abc",
        "t=abc,v1=00",
        "t=1,t=2,v1=00",
        "garbage",
        "t=1700000000",
    ],
)
def test_malformed_signature_headers_do_not_verify(header: str) -> None:
    assert not verify(header, BODY, SECRET, now=1_700_000_000)


# -- the SSRF guard ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://127.8.9.10/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://LocalHost:8080/", "loopback"),
        ("http://10.0.0.5/", "private"),
        ("http://172.16.3.4/", "private"),
        ("http://172.31.255.255/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fd12:3456::1]/", "private"),
        ("http://169.254.1.1/", "link-local"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fe80::1]/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://100.64.0.1/", "shared address space"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("http://[64:ff9b::a00:1]/", "private"),  # NAT64 of 10.0.0.1
        ("http://[2002:7f00:1::1]/", "loopback"),  # 6to4 of 127.0.0.1
        ("http://240.0.0.1/", "reserved"),
        ("http://192.0.2.1/", "reserved"),  # documentation range
        ("http://2130706433/", "non-standard numeric"),  # 127.0.0.1 in decimal
        ("http://0177.0.0.1/", "non-standard numeric"),  # octal
        ("http://0x7f.1/", "non-standard numeric"),  # hex, short form
        ("http://127.1/", "non-standard numeric"),
        ("http://0/", "non-standard numeric"),
        ("http://%31%32%37.0.0.1/", "not a valid host name"),  # percent-encoded 127
        ("file:///etc/passwd", "http or https"),
        ("gopher://93.184.215.14:70/_x", "http or https"),
        ("ftp://93.184.215.14/", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("//93.184.215.14/", "http or https"),
        ("http://user:pass@93.184.215.14/", "credentials"),
        ("http://user@93.184.215.14/", "credentials"),
        ("http:///path-only", "no host"),
        ("http://93.184.215.14:99999/", "not a valid URL"),
        ("http://93.184.215.14/a b", "without spaces"),
        ("http://93.184.215.14/\r\nX-Injected: 1", "without spaces"),
        ("http://no-such-host.invalid/", "does not resolve"),
        ("http://93.184.215.14/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_callbacks_to_internal_or_odd_addresses_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeCallback) as refused:
        check_callback_url(url, [])
    assert reason in str(refused.value)


def test_public_addresses_pass_and_allowed_networks_open_the_rest() -> None:
    public = ipaddress.ip_address("93.184.215.14")
    assert check_callback_url("http://93.184.215.14/hook", []) == [public]
    assert check_callback_url("HTTPS://93.184.215.14:8443/a?b=c", []) == [public]
    assert check_callback_url("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/", [])
    loopback = ipaddress.ip_address("127.0.0.1")
    assert check_callback_url("http://127.0.0.1:8080/", LOCAL) == [loopback]
    assert check_callback_url("http://[::ffff:127.0.0.1]/", LOCAL)
    with pytest.raises(UnsafeCallback, match="loopback"):
        check_callback_url("http://127.0.0.2/", LOCAL)  # only the /32 is allowed
    with pytest.raises(UnsafeCallback, match="private"):
        check_callback_url("http://10.0.0.1/", LOCAL)


# -- the schedule ------------------------------------------------------------------


def test_retry_delays_double_with_jitter() -> None:
    for attempt, step in ((1, 10), (2, 20), (5, 160)):
        delays = [retry_delay(10, attempt) for _ in range(50)]
        assert all(0.8 * step <= d <= 1.2 * step for d in delays)
        assert len(set(delays)) > 1


# -- the README's recipe ------------------------------------------------------------


def test_the_readme_recipe_verifies_what_slidefarm_signs() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Webhooks", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    recipe = namespace["verify_slidefarm"]
    header = sign(BODY, ["whsec_new", "whsec_old"])
    assert recipe(header, BODY, "whsec_new") and recipe(header, BODY, "whsec_old")
    assert not recipe(header, BODY + b"x", "whsec_new")
    assert not recipe(header, BODY, "whsec_other")
    assert not recipe(
        sign(BODY, ["whsec_new"], timestamp=int(time.time()) - 301), BODY, "whsec_new"
    )
    assert not recipe("t=abc,v1=00", BODY, "whsec_new")

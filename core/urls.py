"""Which callback URLs slidefarm will call: the SSRF guard.

A callback URL must never reach the farm's own network: every address its
host resolves to is checked, at submission (the API) and again at each
delivery (the workers: a DNS answer can change), and the connection goes to
an address that was checked (pinned), never to a second resolution.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import urllib3

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254"))
#: Labels of a host written as numbers in a form other than a dotted quad
#: (``2130706433``, ``0177.0.0.1``, ``0x7f.1``): C resolvers accept them.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


class UnsafeCallback(Exception):
    """The callback URL is not one slidefarm will call."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4, Teredo)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def _refusal(address: Address) -> str | None:
    """Why ``address`` is not a public unicast address, or ``None`` if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            why = _refusal(inner)
            return f"{why}, IPv4 {inner} embedded" if why else None
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address in _METADATA:
        return "cloud metadata"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in _SHARED:
        return "shared address space"
    if any(address in net for net in _PRIVATE):
        return "private"
    if not address.is_global or address.is_reserved:
        return "reserved"
    return None


#: A DNS name: dot-separated labels of letters, digits and inner hyphens.
_HOST_NAME = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
)


class Unresolvable(UnsafeCallback):
    """The callback's host does not resolve (now)."""


def _allowed(address: Address, allow: Sequence[Network]) -> bool:
    candidates: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            candidates.append(inner)
    return any(a in net for a in candidates for net in allow if a.version == net.version)


def _resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` stands for: a literal itself, else the resolver's answer."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if all(_NUMERIC_LABEL.match(label) for label in labels):
        # Not a dotted quad, yet the C resolver reads it as an address: say
        # which one it would be, and refuse the spelling whatever it is.
        try:
            meant = socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            meant = "nothing valid"
        raise UnsafeCallback(
            f"the host {host!r} is a non-standard numeric address "
            f"(read as {meant}); write addresses as dotted quads"
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        name = host.rstrip(".").lower()
        if name == "localhost" or name.endswith(".localhost"):
            # RFC 6761: such names are loopback whatever a resolver says.
            return [ipaddress.ip_address("127.0.0.1")]
        raise Unresolvable(f"the host {host!r} does not resolve") from error
    found: list[Address] = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        address = ipaddress.ip_address(text)
        if address not in found:
            found.append(address)
    if not found:
        raise Unresolvable(f"the host {host!r} does not resolve")
    return found


@dataclass(frozen=True, slots=True)
class Target:
    """A checked callback: where to connect, and what to call the host."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[Address, ...]

    @property
    def host_header(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return shown if self.port == default else f"{shown}:{self.port}"


def pinned_pool(target: Target, address: Address, timeout: Any) -> urllib3.HTTPConnectionPool:
    """A one-connection pool to ``address`` itself (one the guard checked),
    never to a second resolution of ``target.host``; over https the
    certificate is checked against ``target.host``. No retries: the caller
    decides. ``timeout``: a ``urllib3.Timeout`` or seconds."""
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            str(address),
            target.port,
            timeout=timeout,
            retries=False,
            maxsize=1,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
        )
    return urllib3.HTTPConnectionPool(
        str(address), target.port, timeout=timeout, retries=False, maxsize=1
    )


def parse_callback_url(
    url: str, allow: Sequence[Network], *, unresolvable_ok: bool = False
) -> Target:
    """Check ``url`` as :func:`check_callback_url` does; return what to connect to."""
    if not isinstance(url, str) or not url:
        raise UnsafeCallback("the callback URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeCallback(f"the callback URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch <= " " or ch == "\x7f" or ch == "\\" for ch in url) or not url.isascii():
        raise UnsafeCallback(
            "the callback URL must be ASCII without spaces, control "
            "characters or backslashes (percent-encode the rest)"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        host, explicit_port = parts.hostname, parts.port
    except ValueError as error:  # "Invalid IPv6 URL", a port out of range
        raise UnsafeCallback(f"the callback URL is not a valid URL ({error})") from error
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeCallback(f"callback URLs must be http or https, not {scheme or 'none'!r}")
    if "@" in parts.netloc:
        raise UnsafeCallback(
            "the callback URL must not carry credentials (user:password@); "
            "verify the signature instead"
        )
    if not host:
        raise UnsafeCallback("the callback URL has no host")
    port = explicit_port if explicit_port is not None else (443 if scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise UnsafeCallback("the callback URL's port is not a number from 1 to 65535")
    if not _HOST_NAME.match(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UnsafeCallback(f"{host!r} is not a valid host name") from None
    try:
        addresses = _resolve(host, port)
    except Unresolvable:
        if not unresolvable_ok:
            raise
        addresses = []
    for address in addresses:
        if _allowed(address, allow):
            continue
        why = _refusal(address)
        if why is not None:
            raise UnsafeCallback(
                f"{host} resolves to {address} ({why})"
                if str(address) != host
                else f"{host} is {why}"
            )
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme, host, port, path, tuple(addresses))


def check_callback_url(
    url: str, allow: Sequence[Network], *, unresolvable_ok: bool = False
) -> list[Address]:
    """The addresses ``url`` may be delivered to, or :class:`UnsafeCallback`
    saying why not: only http(s), a host and no credentials, at most 2,048
    characters, and every address the host resolves to public (not loopback,
    private, link-local or metadata, multicast, unspecified, shared or
    reserved, nor an IPv6 form of one) unless inside a network of ``allow``.

    ``unresolvable_ok``: a host name that does not resolve now passes (with no
    addresses): at submission a DNS failure may be passing, and every delivery
    checks again, refusing it then if it still does not resolve."""
    return list(parse_callback_url(url, allow, unresolvable_ok=unresolvable_ok).addresses)

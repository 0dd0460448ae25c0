"""Outbound HTTP to URLs a tenant chose (webhook receivers), kept off the operator's own network.

A tenant names a URL and this process connects to it from inside the operator's network. Unguarded, that
is a server-side request forgery: ``http://169.254.169.254/`` reaches cloud credentials,
``http://127.0.0.1:6379/`` the Redis broker. So:

* :func:`forbidden_reason` says why an address may not be reached — unspecified, loopback, link-local,
  multicast, shared (100.64/10), private, reserved or otherwise not globally routable, judging the IPv4
  address inside IPv4-mapped, NAT64 and 6to4 IPv6 addresses too — unless its network is one an operator
  allowed (``FT_WEBHOOK_ALLOWED_NETWORKS``).
* :class:`GuardedBackend` is the httpcore network backend of every outbound client. It resolves the host
  itself, refuses the connection when any address is forbidden, and connects to an address it checked:
  the address checked is the address connected to, so a DNS answer that changes after the URL was
  registered (DNS rebinding) gains nothing. Every spelling of an address (``0x7f000001``, ``127.1``,
  ``2130706433``) reaches the check as the address the resolver turned it into. TLS still verifies the
  certificate against the URL's host name, which httpcore passes as ``server_hostname``.
* :func:`registration_refusal` applies the same rule when a URL is registered, for an early, clear error.
* :func:`printable` makes text a receiver chose (a response body, an error) safe to log and store.
"""

from __future__ import annotations

import functools
import socket
import ssl
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
import anyio.to_thread
import httpcore
import httpx

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

ALLOW_HINT = ("webhooks may reach only public addresses; an operator can allow a network with "
              "FT_WEBHOOK_ALLOWED_NETWORKS (CIDRs, e.g. 10.0.0.0/8)")

_SHARED = ip_network("100.64.0.0/10")  # carrier-grade NAT: Python counts it neither private nor global
_NAT64 = ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are the IPv4 address reached
# RFC 6761: these names are loopback whatever a DNS server says, so they are never looked up.
_LOCALHOST_ADDRESSES = (ip_address("127.0.0.1"), ip_address("::1"))


class ForbiddenAddress(httpcore.ConnectError):
    """A connection refused by the address policy. A ConnectError, so httpx reports it as one."""


# --- the address policy ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def allowed_networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """The parsed FT_WEBHOOK_ALLOWED_NETWORKS (validated at start-up by Settings)."""
    return tuple(ip_network(cidr, strict=False) for cidr in cidrs)


def _embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address leads to: IPv4-mapped (``::ffff:a.b.c.d``), NAT64, 6to4."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _kind(ip: IPAddress) -> str | None:
    """What makes ``ip`` unfit to reach from inside the operator's network; None for a public address.
    The flags are tested one by one (not just ``is_global``): Python's ``is_global`` counts multicast,
    and in some versions ``::7f00:1`` and NAT64 addresses, as global."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _SHARED:
        return "shared (carrier-grade NAT)"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if isinstance(ip, IPv6Address) and ip.is_site_local:
        return "site-local"
    if not ip.is_global:
        return "non-public"
    return None


def forbidden_reason(ip: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why ``ip`` may not be connected to (e.g. "a loopback address"), or None when it may."""
    embedded = _embedded_ipv4(ip) if isinstance(ip, IPv6Address) else None
    if any(ip in net or (embedded is not None and embedded in net) for net in allowed):
        return None
    if embedded is not None:
        inner = _kind(embedded)
        if inner:
            return f"an IPv6 address leading to {embedded}, {_article(inner)} {inner} address"
        if ip.ipv4_mapped is not None or ip in _NAT64:
            return None  # the connection goes to the public IPv4 address inside
    kind = _kind(ip)
    return f"{_article(kind)} {kind} address" if kind else None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _is_localhost_name(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def _getaddrinfo(host: str, port: int) -> list[IPAddress]:
    """The host's addresses, in the resolver's order, without repeats (blocking: the system resolver)."""
    if _is_localhost_name(host):
        return list(_LOCALHOST_ADDRESSES)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ip_address(info[4][0]) for info in infos))


def _first_refusal(host: str, addresses: Iterable[IPAddress], allowed: Sequence[IPNetwork]) -> str | None:
    for ip in addresses:
        reason = forbidden_reason(ip, allowed)
        if reason:
            named = f"{ip} is" if host == str(ip) else f"{host} resolves to {ip},"
            return f"{named} {reason}"
    return None


def registration_refusal(host: str, port: int, allowed: Sequence[IPNetwork]) -> str | None:
    """Why a URL with this host may not be registered, or None. A name that does not resolve now is
    accepted: delivery checks again when it connects, so nothing is reached unchecked either way."""
    if ":" in host:  # an IPv6 literal: it must parse, or delivery could not use it either
        try:
            literal = ip_address(host)
        except ValueError:
            return f"[{host}] is not a valid IPv6 address."
        if literal.scope_id:  # "%25eth0": an interface of the operator's machine, never a public address
            return f"[{host}] names a network interface of this server (a zone id); give a public address."
    try:
        addresses = _getaddrinfo(host, port)
    except (OSError, UnicodeError, ValueError):
        return None
    refusal = _first_refusal(host, addresses, allowed)
    return f"{refusal}; {ALLOW_HINT}." if refusal else None


# --- the guarded connection layer ------------------------------------------------------------------------

class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses the policy allows, checking the very addresses it connects to."""

    def __init__(self, allowed: Callable[[], Sequence[IPNetwork]]):
        self._allowed = allowed  # read at each connect, so a changed setting applies at once
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        try:
            # In a worker thread that a cancelled (timed-out) delivery may abandon: the system resolver
            # cannot be interrupted, but the delivery need not wait for it.
            addresses = await anyio.to_thread.run_sync(_getaddrinfo, host, port, abandon_on_cancel=True)
        except (OSError, UnicodeError, ValueError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        refusal = _first_refusal(host, addresses, self._allowed())
        if refusal:
            raise ForbiddenAddress(f"refused to connect: {refusal}; {ALLOW_HINT}")
        error: Exception = httpcore.ConnectError(f"{host} has no address")
        for ip in addresses:  # as a browser does: the next address when one does not answer
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise ForbiddenAddress("outbound requests may not use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process: building one (loading the CA bundle) costs ~30 ms of CPU, which a
    client per delivery, or per idle dispatcher pass, would pay again and again."""
    return httpx.create_ssl_context(trust_env=False)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request mapping, httpcore errors as httpx ones) over a pool whose network
    backend is :class:`GuardedBackend`. httpx takes no backend argument, so the pool it built is replaced;
    the guard is exercised end to end by tests/test_webhook_safety.py, which notices if that stops working."""

    def __init__(self, allowed: Callable[[], Sequence[IPNetwork]], max_connections: int):
        super().__init__(verify=tls_context(), trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls_context(), max_connections=max_connections,
            max_keepalive_connections=max_connections, keepalive_expiry=5.0,
            network_backend=GuardedBackend(allowed))


def guarded_client(allowed: Callable[[], Sequence[IPNetwork]], *, max_connections: int,
                   timeout_s: float) -> httpx.AsyncClient:
    """An AsyncClient that reaches only allowed addresses, never follows redirects (a 3xx could point
    anywhere) and ignores proxy variables (a proxy would connect on its behalf, unchecked)."""
    return httpx.AsyncClient(transport=GuardedTransport(allowed, max_connections), timeout=timeout_s,
                             follow_redirects=False, trust_env=False)


# --- text from outside -----------------------------------------------------------------------------------

def printable(text: str, limit: int) -> str:
    """``text`` as one line of visible characters, at most ``limit`` long (plus "…" when cut). Control and
    format characters — newlines, ANSI escapes, bidi overrides, line separators — are written as escapes
    (``\\n``, ``\\x1b``, ``\\u202e``), so what a receiver sends cannot forge log lines or paint a terminal."""
    out: list[str] = []
    length = 0
    for char in text:
        if unicodedata.category(char)[0] == "C" or char in "\u2028\u2029":
            char = char.encode("unicode_escape").decode("ascii")
        out.append(char)
        length += len(char)
        if length > limit:
            return "".join(out)[:limit] + "…"
    return "".join(out)

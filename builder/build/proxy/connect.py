"""The index proxy's connections check the address they connect to, and connect only to it.

A check before the request (of the host ``urllib.parse`` finds, resolved once
and remembered) and the connection (to the host urllib3 finds, resolved again
when it connects) could disagree on the host, and on what it resolves to: a
name that re-resolves to 127.0.0.1 later (DNS rebinding). Here the urllib3
connection itself resolves the host it was given, refuses the whole name when
any of its addresses is forbidden, and connects to the checked addresses
(numeric: no second resolution). TLS still names the host (SNI, certificate).
"""

from __future__ import annotations

import ipaddress
import socket
import sys

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

# metadata services that are not link-local (Alibaba) besides 169.254.0.0/16 and fe80::/10
_METADATA = {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux connects 0.0.0.0 to the host itself
_NAT64 = ipaddress.ip_network("64:ff9b::/96")       # an IPv4 address in an IPv6 one


class AddressRefused(Exception):
    """The connection would reach an address the proxy may not. Not an OSError: urllib3 neither
    retries nor wraps it, so it reaches Fetcher.open as it was raised."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host, self.address, self.reason = host, address, reason
        super().__init__(f"{reason} ({host} is {address})")


def forbidden_address(addr: str, loopback_ok: bool, private_ok: bool = False) -> str | None:
    """Why the proxy may not connect to ADDR (a numeric address, maybe with a %zone), or None.
    LOOPBACK_OK, PRIVATE_OK: the index itself is on loopback, or on a private network, so
    what its pages link to may be too; else an allowed host's link or redirect could read
    services on the builder's own addresses or its network (a Docker API on 172.17.0.1)."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.is_link_local or ip in _METADATA:
        return "a link-local (cloud metadata) address"
    if (ip.is_loopback or ip.is_unspecified or ip in _THIS_NETWORK) and not loopback_ok:
        return "the builder's own loopback (the index is not on loopback)"
    if not ip.is_global and not (private_ok or loopback_ok):
        return "a private address (the index is on a public one)"
    return None


def index_is_private(host: str) -> bool:
    """Does the index's own host resolve to an address that is not public (an internal mirror)?"""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError):
        return False
    return any(not ipaddress.ip_address(info[4][0].split("%", 1)[0]).is_global for info in infos)


def checked_socket(host: str, port: int, loopback_ok: bool, timeout, source_address, socket_options,
                   private_ok: bool = False) -> socket.socket:
    """A socket connected to HOST:PORT, to an address checked here. urllib3's create_connection,
    with every resolved address checked before any is tried."""
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        why = forbidden_address(sockaddr[0], loopback_ok, private_ok)
        if why:  # any: a name that also resolves somewhere allowed is no better
            raise AddressRefused(host, sockaddr[0], why)
    err: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            for opt in socket_options or ():
                sock.setsockopt(*opt)
            if timeout is not None:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)  # the numeric address checked above
            return sock
        except OSError as exc:
            err = exc
            sock.close()
    raise err if err is not None else OSError(f"no address for {host}")


class _Checked:
    loopback_ok = False
    private_ok = False

    def _new_conn(self) -> socket.socket:  # as urllib3's, on checked_socket
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        try:
            sock = checked_socket(self._dns_host, self.port, self.loopback_ok, timeout,
                                  self.source_address, self.socket_options, self.private_ok)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except socket.timeout as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. "
                                            f"(connect timeout={self.timeout})") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock


def checked_pools(loopback_ok: bool, private_ok: bool) -> dict[str, type]:
    """PoolManager.pool_classes_by_scheme whose connections check their address (LOOPBACK_OK,
    PRIVATE_OK: the index itself is on loopback, or on a private network: see forbidden_address)."""
    attrs = {"loopback_ok": loopback_ok, "private_ok": private_ok}
    http = type("CheckedHTTPConnection", (_Checked, HTTPConnection), attrs)
    https = type("CheckedHTTPSConnection", (_Checked, HTTPSConnection), attrs)
    return {"http": type("CheckedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("CheckedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https})}

"""Local interface addresses and their broadcast addresses (from psutil)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import psutil


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    address: str
    broadcast: str | None


def ipv4_interfaces() -> list[Interface]:
    out: list[Interface] = []
    for name, addrs in psutil.net_if_addrs().items():
        for addr in addrs:
            if addr.family != socket.AF_INET:
                continue
            broadcast = addr.broadcast
            if not broadcast and addr.netmask:
                net = ipaddress.IPv4Network(f"{addr.address}/{addr.netmask}", strict=False)
                if net.prefixlen < 31:
                    broadcast = str(net.broadcast_address)
            out.append(Interface(name, addr.address, broadcast))
    return out


def interface_of(address: str) -> Interface | None:
    """The local interface that owns ``address``, if any."""
    for iface in ipv4_interfaces():
        if iface.address == address:
            return iface
    return None


def resolve(host: str) -> str:
    """An IPv4 address for a host name or address.

    Raises:
        OSError: the name does not resolve (socket.gaierror).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return socket.gethostbyname(host)
    return host


def route_to(host: str) -> str:
    """The local address the kernel would send from to reach ``host``.

    Falls back to :func:`default_address` when there is no route (or the name does not
    resolve).
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((host, 9))  # no packet is sent; this asks for a route
        return str(probe.getsockname()[0])
    except OSError:
        pass
    finally:
        probe.close()
    return default_address()


def default_address() -> str:
    """The address of this host's name, falling back to 127.0.0.1."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"

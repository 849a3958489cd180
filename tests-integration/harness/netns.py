"""Separate IPv4 networks for real processes, built from Linux network namespaces.

A :class:`Topology` makes LANs (a namespace holding a bridge), hosts (a namespace with one
veth on a LAN), routers (a namespace with one veth per LAN and IPv4 forwarding) and NAT
gateways (a router with nftables rules). Processes run inside a host's namespace through
``ip netns exec NAME``; everything they bind and send stays in the namespaces, which are
connected to nothing else: no interface of this suite ever lives in the initial namespace,
so no packet can leave.

Theory of operation
-------------------
* **Names.** Every namespace is named ``dtn-<pid>-<index>-<role>``: ``dtn-`` marks this
  suite, the pid is the test process that owns it, and the index is unique within that
  process. Interface names live inside their namespace (``eth0``, ``br0``, ``p3``), so they
  never collide and stay under the kernel's 15 characters.
* **Addresses.** LAN number ``k`` of topology ``index`` is ``10.<201 + k>.<index>.0/24``,
  so two topologies alive at once (``pytest -n 2``: worker ``gwN`` numbers from
  ``100 N + 1``) do not share a subnet, even though their namespaces could not reach each
  other anyway. Routers take ``.1`` on each LAN, hosts ``.2`` upwards (or the octet asked
  for).
* **Teardown.** :meth:`Topology.close` (a context manager exit, so it runs when a test fails
  or is interrupted) stops the processes it started, kills whatever else still runs in its
  namespaces (``ip netns pids``), then deletes the namespaces; veth pairs and bridges go with
  them. :func:`sweep` removes the namespaces of test processes that no longer exist (a run
  killed with SIGKILL), never those of a live process, so a parallel worker is safe.
* **Availability.** :func:`unavailable` gives the reason these tests cannot run here (not
  root, ``ip`` or ``nft`` missing, namespaces refused), or None.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

PREFIX = "dtn-"
FIRST_SUBNET = 201
COMMAND_TIMEOUT = 20.0
_indexes = itertools.count()


class NetnsError(RuntimeError):
    """An ``ip`` or ``nft`` command failed."""


def run(*cmd: str, stdin: str | None = None) -> str:
    """Run one setup command; its stdout. Raises NetnsError with its stderr if it fails."""
    done = subprocess.run(
        cmd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"network namespace tests need the {tool!r} command (iproute2, nftables)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        run("ip", "netns", "add", probe)
        run("ip", "netns", "exec", probe, "true")  # needs to mount /sys: not in every container
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        with contextlib.suppress(NetnsError, OSError, subprocess.TimeoutExpired):
            run("ip", "netns", "delete", probe)
        return f"cannot create or enter a network namespace: {exc}"
    with contextlib.suppress(NetnsError, OSError, subprocess.TimeoutExpired):
        run("ip", "netns", "delete", probe)
    return None


def _namespaces() -> list[str]:
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]


def _owner(name: str) -> int | None:
    """The pid a namespace of this suite names, or None for any other namespace."""
    if not name.startswith(PREFIX):
        return None
    pid = name[len(PREFIX) :].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _kill_inside(name: str) -> None:
    """SIGKILL every process still running in namespace ``name``."""
    with contextlib.suppress(NetnsError):
        for pid in run("ip", "netns", "pids", name).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


def _delete(name: str) -> None:
    _kill_inside(name)
    with contextlib.suppress(NetnsError):
        run("ip", "netns", "delete", name)


def sweep() -> list[str]:
    """Delete namespaces left by test processes that are gone; the names deleted."""
    removed = []
    for name in _namespaces():
        owner = _owner(name)
        if owner is not None and owner != os.getpid() and not psutil.pid_exists(owner):
            _delete(name)
            removed.append(name)
    return removed


class Namespace:
    """One network namespace: ``ip -n NAME`` commands and the prefix that runs inside it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<Namespace {self.name}>"

    @property
    def wrapper(self) -> list[str]:
        """Put in front of a command line to run it inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def ip(self, *args: str) -> str:
        return run("ip", "-n", self.name, *args)

    def sysctl(self, key: str, value: str) -> None:
        # Through /proc rather than sysctl(8), which a bare Debian lacks (procps).
        path = "/proc/sys/" + key.replace(".", "/")
        run(*self.wrapper, "sh", "-c", f"echo {value} > {path}")

    def nft(self, ruleset: str) -> None:
        run(*self.wrapper, "nft", "-f", "-", stdin=ruleset)


@dataclass
class Lan:
    """A LAN: a bridge (``br0``) in its own namespace; hosts and routers plug into it."""

    name: str
    network: ipaddress.IPv4Network
    bridge: Namespace
    ports: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    octets: itertools.count[int] = field(default_factory=lambda: itertools.count(2))

    @property
    def broadcast(self) -> str:
        return str(self.network.broadcast_address)

    @property
    def gateway(self) -> str:
        """The address a router takes on this LAN (``.1``)."""
        return self.address(1)

    def address(self, octet: int) -> str:
        return str(self.network.network_address + octet)

    def pattern(self) -> str:
        """The ``nodes=`` pattern that matches every host of this LAN."""
        a, b, c, _ = self.network.network_address.exploded.split(".")
        return f"{a}.{b}.{c}.*"


@dataclass
class Host:
    """A machine with one interface (``eth0``) on a LAN (and, unless made without, a
    default route via the LAN's ``.1``)."""

    name: str
    ns: Namespace
    lan: Lan
    address: str

    @property
    def wrapper(self) -> list[str]:
        return self.ns.wrapper


@dataclass
class Router:
    """A namespace with one interface per LAN (``<lan name>0``) and IPv4 forwarding."""

    name: str
    ns: Namespace
    links: dict[str, str] = field(default_factory=dict)  # LAN name -> interface name

    def link(self, lan: Lan, *, up: bool) -> None:
        """Cut (``up=False``) or restore this router's link to ``lan``."""
        self.ns.ip("link", "set", self.links[lan.name], "up" if up else "down")

    def filter_tcp(self, source: str, destination: str, action: str = "drop") -> None:
        """Stop forwarding TCP from ``source`` to ``destination`` (addresses or networks).

        ``action`` is an nftables verdict: ``drop``, or ``reject with tcp reset`` to answer
        as a host whose connection is gone would. :meth:`unfilter` removes every such rule.
        """
        self.ns.nft(
            "table ip dispyfilter {\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter - 10;\n"
            f"    ip saddr {source} ip daddr {destination} meta l4proto tcp {action}\n"
            "  }\n"
            "}\n"
        )

    def unfilter(self) -> None:
        with contextlib.suppress(NetnsError):
            self.ns.nft("delete table ip dispyfilter\n")


class Topology:
    """Namespaces for one test, deleted by :meth:`close` (also a context manager)."""

    def __init__(self) -> None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
        number = int(worker) if worker.isdigit() else 0
        # Distinct per worker and per topology within a worker, for names and subnets.
        self.index = (number * 100 + next(_indexes)) % 250 + 1
        self._namespaces: list[Namespace] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self.lans: dict[str, Lan] = {}
        self.hosts: dict[str, Host] = {}

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _namespace(self, role: str) -> Namespace:
        ns = Namespace(f"{PREFIX}{os.getpid()}-{self.index}-{role}")
        run("ip", "netns", "add", ns.name)
        self._namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        # IPv6 would only add link-local chatter to the logs; these tests are IPv4.
        with contextlib.suppress(NetnsError):  # a kernel without IPv6 has nothing to quiet
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        return ns

    def lan(self, name: str) -> Lan:
        """A new LAN, the next subnet of this topology."""
        third = FIRST_SUBNET + len(self.lans)
        network = ipaddress.IPv4Network(f"10.{third}.{self.index}.0/24")
        bridge = self._namespace(f"lan{name}")
        bridge.ip("link", "add", "br0", "type", "bridge")
        bridge.ip("link", "set", "br0", "up")
        lan = Lan(name, network, bridge)
        self.lans[name] = lan
        return lan

    def _plug(self, lan: Lan, ns: Namespace, ifname: str, address: str) -> None:
        """A veth pair from ``ns`` (``ifname``, with ``address``) to ``lan``'s bridge."""
        port = f"p{next(lan.ports)}"
        ns.ip("link", "add", ifname, "type", "veth", "peer", "name", port, "netns", lan.bridge.name)
        lan.bridge.ip("link", "set", port, "master", "br0")
        lan.bridge.ip("link", "set", port, "up")
        prefix = lan.network.prefixlen
        ns.ip("addr", "add", f"{address}/{prefix}", "broadcast", lan.broadcast, "dev", ifname)
        ns.ip("link", "set", ifname, "up")

    def host(self, name: str, lan: Lan, octet: int | None = None, *, route: bool = True) -> Host:
        """A host on ``lan`` (at ``.octet``, else the next free one).

        Its default route goes via ``.1`` unless ``route`` is False (a host that reaches
        only its own LAN).
        """
        ns = self._namespace(name)
        address = lan.address(octet if octet is not None else next(lan.octets))
        self._plug(lan, ns, "eth0", address)
        if route:
            ns.ip("route", "add", "default", "via", lan.gateway)
        host = Host(name, ns, lan, address)
        self.hosts[name] = host
        return host

    def router(self, name: str, lans: Sequence[Lan]) -> Router:
        """A router at ``.1`` of every LAN in ``lans``, forwarding between them."""
        ns = self._namespace(name)
        router = Router(name, ns)
        for lan in lans:
            ifname = f"{lan.name}0"[:15]
            self._plug(lan, ns, ifname, lan.gateway)
            router.links[lan.name] = ifname
        ns.sysctl("net.ipv4.ip_forward", "1")
        return router

    def nat_gateway(
        self, name: str, outside: Lan, inside: Lan, forwards: Sequence[tuple[int, Host]] = ()
    ) -> Router:
        """A router between ``outside`` and ``inside`` that hides ``inside``.

        Connections from inside leave masqueraded as the gateway's outside address; TCP and
        UDP to that address's port ``p`` reach ``host`` port ``p`` for each ``(p, host)`` in
        ``forwards`` (DNAT). Nothing else from outside is forwarded inside.
        """
        router = self.router(name, [outside, inside])
        out = router.links[outside.name]
        rules = [
            f'iifname "{out}" {proto} dport {port} dnat to {host.address}'
            for port, host in forwards
            for proto in ("tcp", "udp")
        ]
        router.ns.nft(
            "table ip dispytest {\n"
            "  chain pre {\n"
            "    type nat hook prerouting priority dstnat;\n"
            + "".join(f"    {rule}\n" for rule in rules)
            + "  }\n"
            "  chain post {\n"
            "    type nat hook postrouting priority srcnat;\n"
            f'    oifname "{out}" masquerade\n'
            "  }\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter;\n"
            "    ct state established,related accept\n"
            "    ct status dnat accept\n"
            f'    iifname "{out}" drop\n'
            "  }\n"
            "}\n"
        )
        return router

    def popen(self, host: Host, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``cmd`` inside ``host``'s namespace (``kwargs`` go to Popen); :meth:`close`
        kills it."""
        proc: subprocess.Popen[bytes] = subprocess.Popen([*host.wrapper, *cmd], **kwargs)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        """Kill what runs inside, delete every namespace (links and bridges go with them)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for ns in reversed(self._namespaces):
            _delete(ns.name)
        self._namespaces.clear()

    def names(self) -> Iterator[str]:
        return (ns.name for ns in self._namespaces)

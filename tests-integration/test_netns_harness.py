"""The namespace topology library itself (harness/netns.py): it builds what it says, adds
nothing to this machine's own network, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from harness import netns


def _links() -> str:
    """This (initial) namespace's interfaces, without counters that change by themselves."""
    return "\n".join(
        " ".join(line.split()[:2]) for line in netns.run("ip", "-o", "link").splitlines()
    )


def test_routed_lans_without_touching_this_host(topology):
    before = _links()
    a = topology.lan("a")
    b = topology.lan("b")
    topology.router("r", [a, b])
    one = topology.host("one", a)
    two = topology.host("two", b, octet=9)

    assert not a.network.overlaps(b.network)
    assert two.address == b.address(9)
    assert one.ns.ip("-o", "-4", "addr", "show", "dev", "eth0").split()[3] == f"{one.address}/24"
    # Only lo and eth0 inside a host; nothing new out here.
    assert sorted(
        line.split(":")[1].strip().split("@")[0] for line in one.ns.ip("-o", "link").splitlines()
    ) == ["eth0", "lo"]
    assert _links() == before
    # Across the router: one reaches two (ICMP-free check: a TCP connect to a closed port
    # is refused by two's kernel, which only happens if the packet got there).
    probe = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(5)\n"
        "try:\n s.connect((sys.argv[1], 9))\nexcept ConnectionRefusedError:\n print('refused')\n"
        "except OSError as e:\n print(type(e).__name__)\n"
    )
    out = subprocess.run(
        [*one.wrapper, sys.executable, "-c", probe, two.address],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    assert out.strip() == "refused"


def test_close_kills_and_deletes():
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    topo = netns.Topology()
    try:
        lan = topo.lan("x")
        host = topo.host("h", lan)
        proc = topo.popen(host, ["sleep", "60"])
        stray = subprocess.Popen([*host.wrapper, "sleep", "60"])  # not tracked: found by pid
        names = list(topo.names())
        assert set(names) <= set(netns._namespaces())
    finally:
        topo.close()
    assert proc.poll() is not None
    assert stray.wait(10) != 0
    assert not set(names) & set(netns._namespaces())


def test_sweep_removes_only_dead_owners():
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = f"{netns.PREFIX}{gone.pid}-0-left"
    alive = f"{netns.PREFIX}{os.getpid()}-0-mine"
    other = "dispytest-not-ours"
    for name in (dead, alive, other):
        netns.run("ip", "netns", "add", name)
    try:
        removed = netns.sweep()
        left = netns._namespaces()
        assert dead in removed
        assert dead not in left
        assert alive in left
        assert other in left
    finally:
        for name in (dead, alive, other):
            netns._delete(name)

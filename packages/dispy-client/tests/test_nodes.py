"""NodeAllocate, DispyNode and DispyNodeAvailInfo (dispy.nodes)."""

from __future__ import annotations

import pytest

from dispy import DispyNode, DispyNodeAvailInfo, NodeAllocate
from dispy.nodes import to_allocate
from dispy_core.config import NODE_PORT
from dispy_core.protocol.jobs import NodeStatus
from dispy_core.protocol.messages import AvailInfo

CLUSTER = object()  # allocate() receives the cluster; the default ignores it


def allocate(alloc: NodeAllocate, cpus: int) -> int:
    return alloc.allocate(CLUSTER, "10.0.0.5", "node-5", cpus)


# --- NodeAllocate ----------------------------------------------------------------------------


def test_node_allocate_defaults():
    alloc = NodeAllocate("10.0.0.5")
    assert (alloc.host, alloc.ip_addr, alloc.port, alloc.cpus) == ("10.0.0.5", "10.0.0.5", None, 0)


def test_node_allocate_keeps_per_node_depends_and_setup_args():
    alloc = NodeAllocate("10.0.0.5", 4000, 2, ["data.txt"], [1, "x"])
    assert (alloc.depends, alloc.setup_args) == (["data.txt"], (1, "x"))
    assert (NodeAllocate("h").depends, NodeAllocate("h").setup_args) == ([], ())


def test_node_allocate_keeps_port_and_cpus():
    alloc = NodeAllocate("10.0.0.*", port=4000, cpus=2)
    assert (alloc.port, alloc.cpus) == (4000, 2)


@pytest.mark.parametrize(
    ("cpus", "found", "expected"),
    [
        (0, 8, 8),  # 0 = all the node has
        (4, 8, 4),  # positive caps
        (8, 8, 8),
        (16, 8, 8),  # never more than the node has
        (-2, 8, 6),  # negative leaves that many unused
        (-8, 8, 0),
        (-10, 8, 0),  # never below zero: the node is not used
        (0, 1, 1),
    ],
)
def test_allocate_returns_cpus_to_use(cpus, found, expected):
    assert allocate(NodeAllocate("h", cpus=cpus), found) == expected


def test_allocate_accepts_the_reference_signature():
    avail = DispyNodeAvailInfo(cpu=90.0, memory=1 << 30, disk=1 << 40, swap=0.0)
    alloc = NodeAllocate("*", cpus=2)
    assert alloc.allocate(CLUSTER, "10.0.0.5", "node-5", 4, avail, "Linux-x86_64") == 2
    assert alloc.allocate(CLUSTER, "10.0.0.5", "node-5", 4, avail_info=avail, platform="") == 2


def test_subclass_can_filter_nodes_by_platform():
    class LinuxOnly(NodeAllocate):
        def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):
            return cpus if platform.startswith("Linux") else 0

    alloc = LinuxOnly("*")
    assert alloc.allocate(CLUSTER, "h", "n", 4, None, "Linux-6.1") == 4
    assert alloc.allocate(CLUSTER, "h", "n", 4, None, "Windows-11") == 0


@pytest.mark.parametrize("host", ["", None, 10, b"10.0.0.1", ("10.0.0.1",)])
def test_node_allocate_refuses_a_host_that_is_not_a_nonempty_string(host):
    with pytest.raises(ValueError, match="host must be a non-empty string"):
        NodeAllocate(host)


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_node_allocate_refuses_a_port_out_of_range(port):
    with pytest.raises(ValueError, match=r"port must be 1\.\.65535"):
        NodeAllocate("h", port=port)


@pytest.mark.parametrize("port", [1, 51348, 65535])
def test_node_allocate_accepts_ports_in_range(port):
    assert NodeAllocate("h", port=port).port == port


# --- to_allocate -------------------------------------------------------------------------------


def test_to_allocate_accepts_a_string():
    alloc = to_allocate("192.168.3.*")
    assert isinstance(alloc, NodeAllocate)
    assert (alloc.ip_addr, alloc.port, alloc.cpus) == ("192.168.3.*", None, 0)


@pytest.mark.parametrize("item", [("10.0.0.1", 4000), ["10.0.0.1", 4000], ("10.0.0.1", "4000")])
def test_to_allocate_accepts_host_and_port(item):
    alloc = to_allocate(item)
    assert (alloc.ip_addr, alloc.port) == ("10.0.0.1", 4000)


def test_to_allocate_passes_node_allocate_through():
    alloc = NodeAllocate("h", cpus=3)
    assert to_allocate(alloc) is alloc


@pytest.mark.parametrize(
    "item", [None, 10, 1.5, ("h",), ("h", 1, 2), {"h": 1}, {"h"}, b"10.0.0.1", object()]
)
def test_to_allocate_refuses_other_forms(item):
    with pytest.raises(ValueError, match=r"invalid node .*give a host name"):
        to_allocate(item)


# --- matching -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "ip", "node_port", "expected"),
    [
        ("10.0.0.5", None, "10.0.0.5", NODE_PORT, True),
        ("10.0.0.5", None, "10.0.0.5", 4000, False),  # no port: only the default port
        ("10.0.0.5", None, "10.0.0.6", NODE_PORT, False),
        ("10.0.0.5", 4000, "10.0.0.5", 4000, True),
        ("10.0.0.5", 4000, "10.0.0.5", NODE_PORT, False),
        ("10.0.0.*", None, "10.0.0.9", 4000, True),  # a pattern without port: any port
        ("10.0.0.*", 4000, "10.0.0.9", 4000, True),
        ("10.0.0.*", 4000, "10.0.0.9", 4001, False),
        ("10.0.0.*", None, "10.0.1.9", NODE_PORT, False),
        ("*", None, "172.16.0.1", 1, True),
    ],
)
def test_matches_address_and_port(host, port, ip, node_port, expected):
    assert NodeAllocate(host, port)._matches(ip, node_port, NODE_PORT) is expected


def test_target_is_none_for_patterns_and_the_address_otherwise():
    assert NodeAllocate("10.0.0.*")._target(NODE_PORT) is None
    assert NodeAllocate("10.0.0.5")._target(NODE_PORT) == ("10.0.0.5", NODE_PORT)
    assert NodeAllocate("10.0.0.5", 4000)._target(NODE_PORT) == ("10.0.0.5", 4000)


# --- DispyNode and DispyNodeAvailInfo ------------------------------------------------------------


def test_node_status_constants_equal_core_values():
    assert DispyNode.Initialized == NodeStatus.Initialized == 4
    assert DispyNode.Closed == NodeStatus.Closed == 12
    assert DispyNode.AvailInfo == NodeStatus.AvailInfo == 13


def test_new_node_has_all_its_cpus_available():
    node = DispyNode("10.0.0.5", NODE_PORT, "node-5", 4, "Linux")
    assert (node.avail_cpus, node.busy, node.jobs_done, node.cpu_time) == (4, 0, 0, 0.0)
    assert node.avail_info is None
    assert "node-5" in repr(node)


def test_avail_info_from_the_wire():
    wire = AvailInfo(cpu=87.5, memory=2 << 30, disk=5 << 30, swap=3.0)
    info = DispyNodeAvailInfo._from_wire(wire)
    assert info is not None
    assert (info.cpu, info.memory, info.disk, info.swap) == (87.5, 2 << 30, 5 << 30, 3.0)
    assert "cpu=87.5" in repr(info)
    assert DispyNodeAvailInfo._from_wire(None) is None

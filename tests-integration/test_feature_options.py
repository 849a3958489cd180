"""Node options (``--ext_ip_addr``, ``--zombie_interval``, ``--scheduler_node``) and the
client's ``ip_addr`` list and ``ext_ip_addr``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest
from harness import free_port, wait_for
from harness.features import node_tag, wait_nodes

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)

NO_NODE = "no dispy node has joined cluster"

FROZEN_CLIENT = """\
import sys, time
import dispy

def compute(n):
    return n + 1

port, secret, recover, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
cluster = dispy.JobCluster(
    compute, nodes=[("127.0.0.1", port)], ip_addr="127.0.0.1", port=0, secret=secret,
    recover_file=recover,
)
job = cluster.submit(1)
result = job()
with open(out + ".tmp", "w") as fh:
    fh.write(repr(result))
import os
os.replace(out + ".tmp", out)
time.sleep(120)
"""


def test_ext_ip_addr_is_what_the_client_sees(node_factory, cluster_factory):
    node = node_factory.one(cpus=1, name="behind-nat", extra_args=["--ext_ip_addr", "127.0.0.2"])
    cluster = cluster_factory(node_tag, [node.address, ("127.0.0.2", node.port)])
    (dn,) = wait_nodes(cluster, 1)
    assert dn.ip_addr == "127.0.0.2"
    assert dn.name == "behind-nat"
    job = cluster.submit(4)
    assert job() == (None, 4)
    assert job.ip_addr == "127.0.0.2"
    cluster.close()


def test_zombie_interval_drops_frozen_client(node_factory, cluster_factory, tmp_path, secret):
    node = node_factory.one(cpus=1, name="zombies", extra_args=["--zombie_interval", "0.05"])
    script = tmp_path / "frozen_client.py"
    script.write_text(FROZEN_CLIENT)
    out = tmp_path / "frozen-result"
    client = subprocess.Popen(
        [sys.executable, str(script), str(node.port), secret, str(tmp_path / "rec"), str(out)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "frozen-client.log").open("wb"),
    )
    try:
        wait_for(out.exists, 20, "the frozen client's job should finish first")
        assert out.read_text() == "2"
        os.kill(client.pid, signal.SIGSTOP)
        wait_for(
            lambda: psutil.Process(client.pid).status() == psutil.STATUS_STOPPED,
            5,
            "client should stop",
        )

        # Another cluster waits while the node still holds the silent client ...
        other = cluster_factory(node_tag, [node])
        job = other.submit(7)
        assert not job.finish.wait(1.0), "the node should still serve the frozen client"
        # ... and gets the node once the client has been silent for 3 s (0.05 minutes).
        assert job.finish.wait(15), "the node should drop the frozen client"
        assert job.status == DispyJob.Finished
        assert job.result == (None, 7)
        assert node.log_contains("dropping it")
        other.close()
    finally:
        client.kill()
        client.wait(10)


def test_scheduler_node_joins_running_client(node_factory, cluster_factory, dispy_log):
    port = free_port()  # nothing listens there yet
    cluster = cluster_factory(node_tag, [("127.0.0.1", port)])
    job = cluster.submit(3)
    # After this warning the client does not ping for 30 s: only the node's hint can work.
    wait_for(lambda: dispy_log.find(NO_NODE), 10, "the client should say no node joined")
    node = node_factory.one(
        cpus=1,
        name="late",
        port=port,
        extra_args=["--scheduler_node", "127.0.0.1", "--scheduler_port", str(cluster.port)],
    )
    assert job.finish.wait(10), "the node should join the running client by itself"
    assert job.result == (None, 3)
    assert [n.name for n in cluster.nodes()] == ["late"]
    assert node.log_contains(f"at 127.0.0.1:{cluster.port}")
    cluster.close()


def _listening(port):
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def test_client_ip_addr_list_and_ext_ip_addr(node_factory, cluster_factory):
    node = node_factory.one(cpus=1, name="addresses")
    # Both given as lists of loopback addresses (nothing leaves the machine).
    cluster = cluster_factory(node_tag, [node], ip_addr=["127.0.0.1"], ext_ip_addr=["127.0.0.1"])
    assert cluster.submit(1)() == (None, 1)
    cluster.close()

    # Listening on every address of the list; nodes are told to use ext_ip_addr.
    port = free_port()
    cluster = cluster_factory(
        node_tag, [node], ip_addr=["127.0.0.1", "127.0.0.2"], ext_ip_addr="127.0.0.2", port=port
    )
    assert cluster.port == port
    assert _listening(port) == {("127.0.0.1", port), ("127.0.0.2", port)}
    assert cluster.submit(2)() == (None, 2)
    assert node.log_contains(f"at 127.0.0.2:{port}"), "node should use ext_ip_addr"
    cluster.close()


def test_client_ip_addr_list_with_port_0(node_factory, cluster_factory):
    """Regression: with port=0 each address got its own random port; nodes told any address
    but the first could not connect."""
    node = node_factory.one(cpus=1, name="port0")
    cluster = cluster_factory(
        node_tag, [node], ip_addr=["127.0.0.1", "127.0.0.2"], ext_ip_addr="127.0.0.2", port=0
    )
    job = cluster.submit(5)
    assert _listening(cluster.port) == {
        ("127.0.0.1", cluster.port),
        ("127.0.0.2", cluster.port),
    }
    assert job.finish.wait(10)
    assert job.result == (None, 5)
    cluster.close()

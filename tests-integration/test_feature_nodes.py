"""Choosing and managing nodes: ``submit_node``, ``allocate_node``, ``node_jobs``,
``set_node_cpus``, ``NodeAllocate`` (subclasses, cpus, tuples, strings, wildcards),
``DispyNodeAvailInfo`` and the fields of ``DispyNode``."""

from __future__ import annotations

import threading
from typing import ClassVar

import psutil
import pytest
from harness import wait_for
from harness.features import Recorder, max_overlap, node_tag, span, wait_nodes

import dispy
from dispy import DispyJob, DispyNode, DispyNodeAvailInfo, NodeAllocate

pytestmark = pytest.mark.timeout(60)


def _tagged(node_factory, tag, **kwargs):
    return node_factory.one(name=f"node-{tag.lower()}", env={"NODE_TAG": tag}, **kwargs)


def _by_name(cluster):
    return {n.name: n for n in cluster.nodes()}


def _spans(cluster, tmp_path, count, seconds, label, node=None):
    """Run ``count`` jobs of ``seconds`` each (on ``node`` if given); their (start, end)."""
    release = tmp_path / "go"
    release.touch()
    jobs = []
    for i in range(count):
        args = (str(release), str(tmp_path / f"{label}-{i}"), seconds)
        jobs.append(cluster.submit_node(node, *args) if node else cluster.submit(*args))
    assert cluster.wait(timeout=30)
    assert all(j.status == DispyJob.Finished for j in jobs), [(j, j.exception) for j in jobs]
    return [j.result for j in jobs]


def test_submit_node_runs_only_there(node_factory, cluster_factory):
    a = _tagged(node_factory, "A", cpus=1)
    # Node B announces 127.0.0.2 (loopback too), so the two differ by address.
    b = _tagged(node_factory, "B", cpus=1, extra_args=["--ext_ip_addr", "127.0.0.2"])
    cluster = cluster_factory(node_tag, [a.address, b.address, ("127.0.0.2", b.port)])
    wait_nodes(cluster, 2)
    nodes = _by_name(cluster)
    assert nodes["node-b"].ip_addr == "127.0.0.2"

    by_object = [cluster.submit_node(nodes["node-b"], i) for i in range(4)]
    by_ip_b = [cluster.submit_node("127.0.0.2", i) for i in range(3)]
    by_ip_a = [cluster.submit_node("127.0.0.1", i) for i in range(3)]
    by_object_a = [cluster.submit_node(nodes["node-a"], i) for i in range(2)]
    assert cluster.submit_node("127.0.0.9", 1) is None  # not a node of this cluster
    assert cluster.wait(timeout=30)
    assert [j.result for j in by_object] == [("B", i) for i in range(4)]
    assert [j.result for j in by_ip_b] == [("B", i) for i in range(3)]
    assert [j.result for j in by_ip_a] == [("A", i) for i in range(3)]
    assert [j.result for j in by_object_a] == [("A", i) for i in range(2)]
    assert {j.ip_addr for j in by_object + by_ip_b} == {"127.0.0.2"}
    cluster.close()


def test_allocate_node_adds_nodes_later(node_factory, cluster_factory):
    a, b, c = (_tagged(node_factory, tag, cpus=1) for tag in "ABC")
    cluster = cluster_factory(node_tag, [a])
    wait_nodes(cluster, 1)
    assert list(_by_name(cluster)) == ["node-a"]

    assert cluster.allocate_node(b.address) == 0  # (host, port)
    wait_nodes(cluster, 2)
    assert cluster.allocate_node(NodeAllocate("127.0.0.1", c.port)) == 0
    wait_nodes(cluster, 3)
    nodes = _by_name(cluster)
    assert sorted(nodes) == ["node-a", "node-b", "node-c"]
    for name, tag in (("node-b", "B"), ("node-c", "C")):
        assert cluster.submit_node(nodes[name], 5)() == (tag, 5)

    for invalid in (42, ("127.0.0.1",), ("127.0.0.1", 70000), "", ("127.0.0.1", "x")):
        assert cluster.allocate_node(invalid) == -1, invalid
    cluster.close()


def test_node_jobs_and_set_node_cpus(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=2, name="resizable")
    cluster = cluster_factory(span, [node])
    (dn,) = wait_nodes(cluster, 1)
    assert dn.cpus == 2

    # node_jobs lists the jobs running there (by DispyNode or by address).
    release = tmp_path / "release"
    running = [cluster.submit(str(release), str(tmp_path / f"run-{i}")) for i in range(2)]
    for i in range(2):
        wait_for((tmp_path / f"run-{i}").exists, 20, f"job {i} should start")
    assert set(cluster.node_jobs(dn)) == set(running)
    assert set(cluster.node_jobs("127.0.0.1")) == set(running)
    assert cluster.node_jobs("127.0.0.9") == []
    release.touch()
    assert cluster.wait(timeout=20)
    assert cluster.node_jobs(dn) == []

    # Two CPUs: jobs overlap. The measure sees it.
    assert max_overlap(_spans(cluster, tmp_path, 4, 0.4, "two")) == 2

    assert cluster.set_node_cpus(dn, 1) == 1
    assert dn.cpus == 1
    assert max_overlap(_spans(cluster, tmp_path, 4, 0.25, "one")) == 1

    assert cluster.set_node_cpus(dn, 3) == -1  # more than the node has
    assert cluster.set_node_cpus(dn, -2) == -1  # would leave none
    assert cluster.set_node_cpus("127.0.0.9", 1) == -1  # not a node of this cluster
    assert cluster.set_node_cpus(dn, 2) == 2
    assert max_overlap(_spans(cluster, tmp_path, 4, 0.4, "again")) == 2
    assert cluster.set_node_cpus("127.0.0.1", -1) == 1  # all but one of 2
    assert max_overlap(_spans(cluster, tmp_path, 3, 0.25, "minus")) == 1
    cluster.close()


def test_set_node_cpus_up_then_down_at_once(node_factory, cluster_factory, tmp_path):
    """Regression: a worker still starting from the first call took a job after the second
    call had lowered the CPUs to 1."""
    node = node_factory.one(cpus=2, name="flip")
    cluster = cluster_factory(span, [node])
    (dn,) = wait_nodes(cluster, 1)
    assert cluster.set_node_cpus(dn, 1) == 1
    for round_ in range(4):  # a race: it shows in the first round or two
        assert cluster.set_node_cpus(dn, 2) == 2
        assert cluster.set_node_cpus(dn, 1) == 1
        spans = _spans(cluster, tmp_path, 3, 0.2, f"flip{round_}")
        assert max_overlap(spans) == 1, f"round {round_}: 2 jobs at once on 1 CPU"
    cluster.close()


def test_node_jobs_lists_only_running_jobs(node_factory, cluster_factory, tmp_path):
    """A job sent ahead to a busy node waits there: it is not listed or reported running.

    Regression: node_jobs(), job.status and DispyNode.busy counted it as running.
    """
    node = node_factory.one(cpus=2, name="prefetch")
    cluster = cluster_factory(span, [node])
    (dn,) = wait_nodes(cluster, 1)
    release = tmp_path / "release"
    jobs = [cluster.submit(str(release), str(tmp_path / f"run-{i}")) for i in range(3)]
    for i in range(2):
        wait_for((tmp_path / f"run-{i}").exists, 20, f"job {i} should start")
    listed = cluster.node_jobs(dn)
    waiting_status, busy = jobs[2].status, dn.busy
    release.touch()
    assert cluster.wait(timeout=20)
    cluster.close()
    # Only two jobs can run on 2 CPUs at once; the third started after one ended.
    assert set(listed) == set(jobs[:2]), f"node_jobs listed {listed} on a 2-CPU node"
    assert waiting_status != DispyJob.Running
    assert busy == 2


class Picky(NodeAllocate):
    """Refuses the node named 'node-skip'; records every call."""

    calls: ClassVar[list[dict]] = []
    lock = threading.Lock()

    def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):
        with self.lock:
            self.calls.append(
                {
                    "cluster": cluster,
                    "ip_addr": ip_addr,
                    "name": name,
                    "cpus": cpus,
                    "avail_info": avail_info,
                    "platform": platform,
                }
            )
        return 0 if name == "node-skip" else cpus


class OneCpu(NodeAllocate):
    def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):
        return 1


def test_node_allocate_subclass_rejects_by_name(node_factory, cluster_factory):
    keep = _tagged(node_factory, "KEEP", cpus=1)
    skip = _tagged(node_factory, "SKIP", cpus=1)
    Picky.calls = []
    cluster = cluster_factory(
        node_tag, [Picky("127.0.0.1", keep.port), Picky("127.0.0.1", skip.port)]
    )
    wait_for(lambda: len(Picky.calls) >= 2, 15, "allocate() should see both nodes")
    wait_nodes(cluster, 1)
    skip.wait_log("did not take this node")
    jobs = [cluster.submit(i) for i in range(6)]
    assert cluster.wait(timeout=30)
    assert [j.result for j in jobs] == [("KEEP", i) for i in range(6)]
    assert [n.name for n in cluster.nodes()] == ["node-keep"]

    calls = {c["name"]: c for c in Picky.calls}
    assert set(calls) == {"node-keep", "node-skip"}
    for call in calls.values():
        assert call["cluster"] is cluster
        assert call["ip_addr"] == "127.0.0.1"
        assert call["cpus"] == 1
        assert "Linux" in call["platform"]
        _check_avail(call["avail_info"])
    cluster.close()


def test_node_allocate_limits_cpus(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=2, name="big")
    cluster = cluster_factory(span, [OneCpu("127.0.0.1", node.port)])
    (dn,) = wait_nodes(cluster, 1)
    assert dn.cpus == 1
    assert max_overlap(_spans(cluster, tmp_path, 3, 0.25, "sub")) == 1
    cluster.close()

    cluster = cluster_factory(span, [NodeAllocate("127.0.0.1", node.port, cpus=1)])
    (dn,) = wait_nodes(cluster, 1)
    assert dn.cpus == 1
    assert max_overlap(_spans(cluster, tmp_path, 3, 0.25, "cpus1")) == 1
    cluster.close()
    assert node.log_count("ready on 1 CPU(s)") == 2


def test_nodes_as_string_with_node_port_and_as_wildcard(node_factory, cluster_factory):
    node = node_factory.one(cpus=1, name="plain")
    # A plain address: the port comes from node_port=.
    cluster = cluster_factory(node_tag, ["127.0.0.1"], node_port=node.port)
    assert cluster.submit(1)() == (None, 1)
    cluster.close()
    # A wildcard: found by a broadcast on 127.255.255.255 (client ip_addr is 127.0.0.1).
    cluster = cluster_factory(node_tag, ["127.0.0.*"], node_port=node.port)
    job = cluster.submit(2)
    assert job.finish.wait(20), "the wildcard should find the node"
    assert job.result == (None, 2)
    assert [n.name for n in cluster.nodes()] == ["plain"]
    cluster.close()


def _check_avail(info):
    assert isinstance(info, DispyNodeAvailInfo), info
    assert 0.0 <= info.cpu <= 100.0
    assert 0 < info.memory <= psutil.virtual_memory().total
    assert info.disk > 0
    assert 0.0 <= info.swap <= 100.0


def test_avail_info_pulses_and_dispy_node_fields(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=2, name="reporting")
    recorder = Recorder()
    cluster = cluster_factory(
        span, [node], pulse_interval=1, cluster_status=recorder.cluster_status
    )
    wait_for(
        lambda: len(recorder.node_events(DispyNode.AvailInfo)) >= 2,
        6,
        "two AvailInfo reports with pulse_interval=1",
    )
    reported = recorder.node_events(DispyNode.AvailInfo)[-1]
    assert reported.name == "reporting"
    _check_avail(reported.avail_info)
    assert reported.avail_info.disk <= psutil.disk_usage(str(node.dest_path_prefix)).total

    (dn,) = wait_nodes(cluster, 1)
    assert dn.ip_addr == "127.0.0.1"
    assert dn.name == "reporting"  # --name
    assert dn.cpus == 2
    assert "Linux" in dn.platform
    assert (dn.busy, dn.jobs_done) == (0, 0)
    release = tmp_path / "release"
    held = cluster.submit(str(release), str(tmp_path / "held"))
    wait_for((tmp_path / "held").exists, 20, "job should start")
    assert dn.busy == 1
    release.touch()
    spans = [held(), *_spans(cluster, tmp_path, 3, 0.2, "done")]
    assert dn.busy == 0
    assert dn.jobs_done == 4
    assert dn.cpu_time >= 0.9 * sum(end - start for start, end in spans)
    cluster.close()


def test_dispy_exports():
    """What the README lists under dispy-client is importable from dispy."""
    for name in ("JobCluster", "DispyJob", "DispyNode", "NodeAllocate", "DispyNodeAvailInfo"):
        assert hasattr(dispy, name)

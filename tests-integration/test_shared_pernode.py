"""A SharedJobCluster whose NodeAllocate gives nodes their own ``setup_args`` and
``depends`` (PROTOCOL.md 13, "Per-node set-up"), against a real ``dispy-scheduler serve``
and real nodes: each node's setup sees its own arguments and file, a node given none the
common set-up."""

from __future__ import annotations

import pytest
from harness.features import own_values, setup_own, wait_nodes
from harness.shared_inproc import SharedFactory

from dispy import DispyJob, DispyNode, NodeAllocate

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def shared_factory(scheduler_factory, cluster_secret):
    factory = SharedFactory(cluster_secret)
    yield factory
    problems = factory.teardown()
    if problems:
        pytest.fail("shared cluster teardown:\n  " + "\n  ".join(problems))


def test_each_node_gets_its_own_setup_args_and_file_and_others_the_common_setup(
    node_factory, scheduler_factory, shared_factory, tmp_path
):
    names = ["own-a", "own-b", "own-c"]
    nodes = [node_factory.one(cpus=1, name=name, wait=False) for name in names]
    for node in nodes:
        node.wait_ready()
    sched = scheduler_factory(nodes)

    class PerNode(NodeAllocate):
        def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):
            # as a 4.15 program does: allocate() sets the node's own setup; own-c gets none
            if name == "own-c":
                self.depends, self.setup_args = [], ()
                return cpus
            data = tmp_path / f"own-data-{name}.txt"
            data.write_text(f"data for {name}")
            self.depends = [str(data)]
            self.setup_args = (data.name, f"tag-{name}")
            return cpus

    cluster = shared_factory(own_values, sched, nodes=[PerNode("*")], setup=setup_own)
    wait_nodes(cluster, 3)
    jobs = [cluster.submit(i) for i in range(12)]
    assert cluster.wait(timeout=40)
    seen = set()
    for job in jobs:
        assert job.status == DispyJob.Finished, (job.status, job.exception)
        n, name, tag, data, files = job.result
        assert n == jobs.index(job)
        seen.add(name)
        if name == "own-c":
            assert (tag, data, files) == ("common", None, [])
        else:
            assert (tag, data) == (f"tag-{name}", f"data for {name}")
            assert files == [f"own-data-{name}.txt"]  # only that node's own file
    assert seen == set(names), seen


def test_a_per_node_file_over_the_schedulers_max_file_size_leaves_that_node_unused(
    node_factory, scheduler_factory, shared_factory, tmp_path
):
    nodes = [node_factory.one(cpus=1, name=name, wait=False) for name in ("big-a", "small-b")]
    for node in nodes:
        node.wait_ready()
    sched = scheduler_factory(nodes, "--max_file_size", "1k")
    statuses = []

    class PerNode(NodeAllocate):
        def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):
            data = tmp_path / f"own-data-{name}.txt"
            data.write_text(("x" * 4000) if name == "big-a" else f"data for {name}")
            self.depends = [str(data)]
            self.setup_args = (data.name, f"tag-{name}")
            return cpus

    def status(code, node, job):
        if node is not None and job is None:
            statuses.append((code, node.name, node.error))

    cluster = shared_factory(
        own_values, sched, nodes=[PerNode("*")], setup=setup_own, cluster_status=status
    )
    wait_nodes(cluster, 1)
    jobs = [cluster.submit(i) for i in range(3)]
    assert cluster.wait(timeout=30)
    for job in jobs:
        assert job.status == DispyJob.Finished, (job.status, job.exception)
        assert job.result[1:4] == ("small-b", "tag-small-b", "data for small-b")
    failed = [(name, why) for code, name, why in statuses if code == DispyNode.SetupFailed]
    assert len(failed) == 1, statuses
    name, why = failed[0]
    assert name == "big-a"
    assert "own-data-big-a.txt" in why
    assert "--max_file_size" in why

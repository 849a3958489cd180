"""Who a node serves: one cluster at a time, and only clusters that know its secret."""

from __future__ import annotations

import pytest
from harness import History, wait_for
from harness.computations import pid_and_value, square_plus, tagged

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)


def test_node_serves_one_cluster_at_a_time(node_factory, cluster_factory):
    node = node_factory.one(cpus=1, name="exclusive")
    a = cluster_factory(pid_and_value, [node])
    first = a.submit(1)
    assert first.finish.wait(20), "cluster A should get the node"
    assert first.result[1] == 2

    # B arrives while A holds the node: the node remembers B's ping but does not serve it.
    b = cluster_factory(pid_and_value, [node])
    node.wait_log(f"busy: remembering ping from 127.0.0.1:{b.port}")
    waiting = b.submit(10)
    more_a = [a.submit(i) for i in range(2, 6)]
    assert a.wait(timeout=20)
    assert [j.result[1] for j in more_a] == [3, 4, 5, 6]
    assert waiting.status == DispyJob.Created
    assert not waiting.finish.is_set()
    assert b.nodes() == []

    # Once A closes, the node offers itself to B.
    a.close()
    assert waiting.finish.wait(20), "cluster B should get the node after A closed"
    assert waiting.status == DispyJob.Finished
    assert waiting.result[1] == 11
    assert waiting.result[0] != first.result[0], "B must not reuse A's job processes"
    b.close()

    # A brand-new cluster after both closed gets the node too.
    c = cluster_factory(square_plus, [node])
    jobs = [c.submit(i) for i in range(5)]
    assert c.wait(timeout=20)
    assert [j.result for j in jobs] == [square_plus(i) for i in range(5)]
    c.close()
    node.wait_log("free again", count=3)


def test_two_clusters_with_own_secrets_do_not_mix(node_factory, cluster_factory, dispy_log):
    node_a = node_factory.one(cpus=1, name="node-a", secret="sa-" + "a" * 10, env={"NODE_TAG": "A"})
    node_b = node_factory.one(cpus=1, name="node-b", secret="sb-" + "b" * 10, env={"NODE_TAG": "B"})
    both = [node_a, node_b]
    ha, hb = History(), History()
    # Each cluster lists both nodes; only the secret keeps them apart.
    a = cluster_factory(
        tagged, both, secret=node_a.secret, callback=ha.callback, cluster_status=ha.cluster_status
    )
    b = cluster_factory(
        tagged, both, secret=node_b.secret, callback=hb.callback, cluster_status=hb.cluster_status
    )
    wait_for(lambda: len(a.nodes()) == 1 and len(b.nodes()) == 1, 20, "each cluster gets its node")
    assert [n.name for n in a.nodes()] == ["node-a"]
    assert [n.name for n in b.nodes()] == ["node-b"]

    for i in range(300):
        ha.submit(a, "A", i)
        hb.submit(b, "B", i)
    assert a.wait(timeout=30), ha.summary()
    assert b.wait(timeout=30), hb.summary()

    ha.check(lambda tag, n: (tag, "A", n * 3), allowed={DispyJob.Finished})
    hb.check(lambda tag, n: (tag, "B", n * 3), allowed={DispyJob.Finished})
    assert set(ha.finished_on()) == {"node-a"}
    assert set(hb.finished_on()) == {"node-b"}
    assert [n.name for n in a.nodes()] == ["node-a"]
    assert [n.name for n in b.nodes()] == ["node-b"]
    a.close()
    b.close()

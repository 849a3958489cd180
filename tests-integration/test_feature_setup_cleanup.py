"""``setup`` (once per node, in the computation's directory), ``cleanup``, ``dest_path`` and
the node's ``--clean``."""

from __future__ import annotations

import functools
import os
import time

import pytest
from harness import wait_for
from harness.features import (
    Recorder,
    cleanup_marker,
    read_setup_globals,
    setup_nonzero,
    setup_plain,
    setup_raises,
    setup_record,
    touch,
    wait_nodes,
    whereami,
)

from dispy import DispyJob, DispyNode

pytestmark = pytest.mark.timeout(60)


def test_setup_once_per_node_in_its_directory_and_globals_seen(
    node_factory, cluster_factory, tmp_path
):
    nodes = [node_factory.one(cpus=2, name="setup-a"), node_factory.one(cpus=1, name="setup-b")]
    runs = tmp_path / "setup-runs.txt"
    cluster = cluster_factory(
        read_setup_globals, nodes, setup=functools.partial(setup_record, str(runs))
    )
    wait_nodes(cluster, 2)
    jobs = [cluster.submit(i) for i in range(12)]
    assert cluster.wait(timeout=30)
    assert all(job.status == DispyJob.Finished for job in jobs), [(j, j.exception) for j in jobs]

    # Exactly once per node, however many jobs and CPUs.
    assert len(runs.read_text().splitlines()) == 2
    by_dir = {}
    for job in jobs:
        seen = job.result
        assert seen["n"] == jobs.index(job)
        # setup ran in the job's directory, before the job (its file is there) ...
        assert seen["setup_cwd"] == seen["cwd"]
        assert seen["made"] == "setup was here"
        by_dir.setdefault(seen["cwd"], set()).add(seen["setup_pid"])
    # ... which is the computation's directory under each node's --dest_path_prefix; and
    # the globals of one setup run are what every job of that node sees.
    prefixes = sorted(str(n.dest_path_prefix) for n in nodes)
    assert sorted(os.path.dirname(d) for d in by_dir) == prefixes
    assert all(len(pids) == 1 for pids in by_dir.values()), by_dir
    cluster.close()


@pytest.mark.parametrize(
    ("setup", "reason"),
    [(setup_nonzero, "returned 3"), (setup_raises, "RuntimeError: setup exploded on purpose")],
    ids=["nonzero", "raises"],
)
def test_failed_setup_keeps_node_out(
    node_factory, cluster_factory, tmp_path, dispy_log, setup, reason
):
    node = node_factory.one(cpus=1, name="bad-setup")
    recorder = Recorder()
    cluster = cluster_factory(
        touch,
        [node],
        setup=setup,
        callback=recorder.callback,
        cluster_status=recorder.cluster_status,
    )
    marker = tmp_path / "job-ran"
    job = cluster.submit(str(marker))
    failed = wait_for(
        lambda: recorder.node_events(DispyNode.SetupFailed), 15, "cluster_status: SetupFailed"
    )
    assert failed[0].name == "bad-setup"
    assert (failed[0].ip_addr, failed[0].port) == node.address
    assert reason in (failed[0].error or ""), failed[0].error
    message = wait_for(lambda: dispy_log.find(reason), 5, "the client should log why")
    assert "bad-setup" in message, message

    assert cluster.wait(timeout=1.0) is False
    assert not job.finish.is_set()
    assert job.status == DispyJob.Created
    assert cluster.nodes() == []
    assert not recorder.node_events(DispyNode.Initialized)
    started = time.monotonic()
    cluster.close(terminate=True)
    assert time.monotonic() - started < 5, "close(terminate=True) should return promptly"
    assert job.status in (DispyJob.Cancelled, DispyJob.Abandoned)
    assert not marker.exists(), "no job may run on a node whose setup failed"


def test_cleanup_true_false_and_cleanup_function(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="cleaner")
    data = tmp_path / "dep_file.txt"
    data.write_text("dependency")

    # cleanup=True (the default): the computation's files go away at close.
    cluster = cluster_factory(whereami, [node], depends=[str(data)], setup=setup_plain)
    where = cluster.submit()()
    assert where.startswith(str(node.dest_path_prefix)), where
    assert os.path.isfile(os.path.join(where, "dep_file.txt"))
    assert os.path.isfile(os.path.join(where, "made_by_setup.txt"))
    cluster.close()
    assert not os.path.exists(where), os.listdir(where)

    # cleanup=False: everything stays.
    cluster = cluster_factory(whereami, [node], depends=[str(data)], cleanup=False)
    kept = cluster.submit()()
    cluster.close()
    assert kept != where
    with open(os.path.join(kept, "dep_file.txt")) as fh:
        assert fh.read() == "dependency"

    # A cleanup function runs on the node at close, then the files are removed.
    mark = tmp_path / "cleanup-ran.txt"
    cluster = cluster_factory(
        whereami,
        [node],
        depends=[str(data)],
        cleanup=functools.partial(cleanup_marker, str(mark)),
    )
    cleaned = cluster.submit()()
    assert os.path.isdir(cleaned)
    assert not mark.exists(), "cleanup must not run before close"
    cluster.close()
    assert mark.read_text() == cleaned, "cleanup runs in the computation's directory"
    assert not os.path.exists(cleaned)


def _restart(node):
    # The log keeps the "serving" line of the earlier start: wait for one more.
    count = node.log_count(node.ready_line())
    node.start(wait=False)
    node.wait_log(node.ready_line(), 20, count=count + 1)


def test_dest_path_and_node_clean(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="dest")
    data = tmp_path / "dep_file.txt"
    data.write_text("kept between runs")
    cluster = cluster_factory(
        whereami, [node], depends=[str(data)], dest_path="feature/place", cleanup=False
    )
    where = cluster.submit()()
    cluster.close()
    expected = node.dest_path_prefix / "feature" / "place"
    assert where == str(expected)
    assert (expected / "dep_file.txt").read_text() == "kept between runs"

    # A restart alone keeps the files of earlier runs ...
    assert node.stop() == 0
    _restart(node)
    assert (expected / "dep_file.txt").exists()
    # ... --clean removes them.
    assert node.stop() == 0
    node.extra_args.append("--clean")
    _restart(node)
    assert not (expected / "dep_file.txt").exists()
    assert not (node.dest_path_prefix / "feature").exists()
    # And the node still serves.
    cluster = cluster_factory(whereami, [node])
    assert cluster.submit()().startswith(str(node.dest_path_prefix))
    cluster.close()

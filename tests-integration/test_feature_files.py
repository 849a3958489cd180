"""Files: ``dispy_send_file`` (node to client), ``cluster.send_file`` (client to node), the
node's ``--max_file_size``, and paths that try to escape their directory."""

from __future__ import annotations

import contextlib
import os

import pytest
from harness.features import (
    Recorder,
    make_and_send,
    pattern_bytes,
    read_text,
    send_link,
    send_path,
    wait_nodes,
)
from harness.polling import wait_for

from dispy import DispyJob, DispyNode

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


@pytest.fixture
def client_dir(tmp_path):
    """The client's working directory for the test (restored afterwards).

    Request it before ``cluster_factory`` so clusters close while it is still current.
    """
    where = tmp_path / "client"
    where.mkdir()
    with contextlib.chdir(where):
        yield where


def _files_under(folder):
    return sorted(
        os.path.relpath(os.path.join(d, f), folder)
        for d, _, names in os.walk(folder)
        for f in names
        if not f.startswith("_dispy_")  # the cluster's recover file
    )


def test_send_file_lands_under_client_directory(client_dir, node_factory, cluster_factory):
    node = node_factory.one(cpus=1, name="sender")
    cluster = cluster_factory(make_and_send, [node])
    top = cluster.submit("top.bin", 3000)
    deep = cluster.submit("sub/dir/deep.bin", 5000)
    assert cluster.wait(timeout=30)
    for job in (top, deep):
        assert job.status == DispyJob.Finished, job.exception
        assert job.result == 0
    assert (client_dir / "top.bin").read_bytes() == pattern_bytes(3000)
    assert (client_dir / "sub" / "dir" / "deep.bin").read_bytes() == pattern_bytes(5000)
    cluster.close()
    assert _files_under(client_dir) == ["sub/dir/deep.bin", "top.bin"]


@pytest.mark.parametrize(
    ("option", "fits", "too_big"),
    [
        ("1k", 1020, 1030),  # k = 1024: 1020 passes where k = 1000 would refuse it
        ("1m", 1_040_000, 1_100_000),
        (None, 9 * MiB, 11 * MiB),  # the default: 10 MB
        ("0", 11 * MiB, None),  # no limit
    ],
    ids=["1k", "1m", "default", "0"],
)
def test_max_file_size(client_dir, node_factory, cluster_factory, option, fits, too_big):
    extra = ["--max_file_size", option] if option is not None else []
    node = node_factory.one(cpus=1, name="limited", extra_args=extra)
    cluster = cluster_factory(make_and_send, [node])
    ok = cluster.submit("fits.bin", fits)
    big = cluster.submit("too_big.bin", too_big) if too_big else None
    assert cluster.wait(timeout=30)
    assert ok.status == DispyJob.Finished, ok.exception
    assert ok.result == 0
    assert (client_dir / "fits.bin").read_bytes() == pattern_bytes(fits)
    if big is not None:
        # Refused: -1 (as 4.15's programs expect) and why on the job's stderr; nothing (not
        # even part of it) arrives.
        assert big.status == DispyJob.Finished, big.exception
        assert big.result == -1
        assert "max_file_size" in big.stderr, big.stderr
        assert str(too_big) in big.stderr, big.stderr
    cluster.close()
    assert _files_under(client_dir) == ["fits.bin"]


def test_send_file_refuses_paths_outside_job_directory(
    client_dir, node_factory, cluster_factory, tmp_path
):
    node = node_factory.one(cpus=1, name="escaper")
    cluster = cluster_factory(send_path, [node])
    parent = cluster.submit("../outside.txt", True)
    absolute = cluster.submit("/etc/hostname", False)
    assert cluster.wait(timeout=30)
    for job in (parent, absolute):
        assert (job.status, job.result) == (DispyJob.Finished, -1), job.exception
        assert "outside" in job.stderr, job.stderr
    assert "'../outside.txt'" in parent.stderr
    assert "'/etc/hostname'" in absolute.stderr
    cluster.close()
    assert _files_under(client_dir) == []
    assert not (tmp_path / "outside.txt").exists()


def test_send_file_refuses_link_to_outside(client_dir, node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="linker")
    secret_file = tmp_path / "not-for-the-client.txt"
    secret_file.write_text("private")
    cluster = cluster_factory(send_link, [node])
    job = cluster.submit(str(secret_file))
    assert job.finish.wait(30)
    assert (job.status, job.result) == (DispyJob.Finished, -1), job.exception
    assert "outside" in job.stderr, job.stderr
    cluster.close()
    assert _files_under(client_dir) == []


def test_dest_path_escaping_prefix_is_refused(client_dir, node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="dest-escape")
    recorder = Recorder()
    cluster = cluster_factory(
        read_text, [node], dest_path="../../escape", cluster_status=recorder.cluster_status
    )
    job = cluster.submit("x")
    failed = wait_for(
        lambda: recorder.node_events(DispyNode.SetupFailed), 15, "cluster_status: SetupFailed"
    )
    assert "dest_path" in failed[0].error, failed[0].error
    assert "'../../escape'" in failed[0].error, failed[0].error
    assert ".." in failed[0].error
    assert not job.finish.is_set()
    cluster.close(terminate=True)
    escaped = [p for p in tmp_path.rglob("escape") if p.is_dir()]
    assert escaped == []
    assert not (node.dest_path_prefix.parent.parent / "escape").exists()


def test_cluster_send_file_to_node(client_dir, node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="receiver", extra_args=["--max_file_size", "1k"])
    first = tmp_path / "first_xyz.txt"
    first.write_text("sent to a DispyNode")
    second = tmp_path / "deeper" / "second_xyz.txt"
    second.parent.mkdir()
    second.write_text("sent to an address")
    big = tmp_path / "big_xyz.txt"
    big.write_bytes(b"x" * 2000)
    cluster = cluster_factory(read_text, [node])
    (dispy_node,) = wait_nodes(cluster, 1)

    assert cluster.send_file(str(first), dispy_node) == 0
    assert cluster.send_file(str(second), "127.0.0.1") == 0  # lands by its base name
    assert cluster.send_file(str(first), "127.0.0.9") == -1  # not a node of this cluster
    assert cluster.send_file(str(tmp_path / "missing.txt"), dispy_node) == -1
    assert cluster.send_file(str(big), dispy_node) == -1  # over the node's max_file_size

    jobs = [cluster.submit(name) for name in ("first_xyz.txt", "second_xyz.txt", "big_xyz.txt")]
    assert cluster.wait(timeout=30)
    assert jobs[0].result == "sent to a DispyNode"
    assert jobs[1].result == "sent to an address"
    assert jobs[2].status == DispyJob.Terminated  # refused, not truncated
    assert "FileNotFoundError" in jobs[2].exception
    cluster.close()


def test_recover_file_removed_even_after_chdir(client_dir, node_factory, cluster_factory):
    """Regression: the default recover file path was relative to the directory at creation."""
    node = node_factory.one(cpus=1, name="chdir")
    cluster = cluster_factory(read_text, [node])
    created = [p.name for p in client_dir.iterdir() if p.name.startswith("_dispy_")]
    assert created, "the default recover file is made in the current directory"
    elsewhere = client_dir / "elsewhere"
    elsewhere.mkdir()
    with contextlib.chdir(elsewhere):
        cluster.close()
    assert [p.name for p in client_dir.iterdir() if p.name.startswith("_dispy_")] == []

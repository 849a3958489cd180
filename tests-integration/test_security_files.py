"""Files (issue 9, item 9): the node's prefix is private and its own, received files are not
open to others, and a computation cannot live in the node's result store."""

from __future__ import annotations

import contextlib
import os

import pytest
from harness.computations import file_modes, send_with_mode
from harness.polling import wait_for

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client_dir(tmp_path):
    where = tmp_path / "client"
    where.mkdir()
    with contextlib.chdir(where):
        yield where


def test_prefix_computation_dir_and_received_files_are_private(
    node_factory, cluster_factory, tmp_path
):
    depend = tmp_path / "data.txt"
    depend.write_text("for the job")
    depend.chmod(0o666)  # the client's mode must not open the node's copy to others
    node = node_factory.one(cpus=1, name="private")
    old = os.umask(0)  # the node inherits a permissive umask
    try:
        cluster = cluster_factory(file_modes, [node], depends=[str(depend)])
    finally:
        os.umask(old)
    job = cluster.submit("data.txt")
    assert job is not None
    assert job() == [0o700, 0o640], job.exception
    cluster.close()
    assert node.dest_path_prefix.stat().st_mode & 0o777 == 0o700


def test_files_sent_back_to_the_client_are_masked(client_dir, node_factory, cluster_factory):
    node = node_factory.one(cpus=1, name="sends")
    cluster = cluster_factory(send_with_mode, [node])
    job = cluster.submit("open.txt", 0o666)
    assert job is not None
    assert job() == 0, job.exception
    assert (client_dir / "open.txt").read_text() == "sent"
    assert (client_dir / "open.txt").stat().st_mode & 0o777 == 0o640
    cluster.close()


@pytest.mark.parametrize("dest_path", [".dispy-results", "/.dispy-results/42"])
def test_dest_path_in_the_result_store_is_refused(
    node_factory, cluster_factory, dispy_log, dest_path
):
    node = node_factory.one(cpus=1, name="store-guard")
    stored = node.dest_path_prefix / ".dispy-results" / "42"
    stored.mkdir(parents=True)
    (stored / "1.result").write_bytes(b"another client's result")
    cluster = cluster_factory(file_modes, [node], dest_path=dest_path)
    message = wait_for(
        lambda: dispy_log.find("result store"),
        15,
        lambda: f"the client should be told why; log:\n{dispy_log.text()}",
    )
    assert f"cannot run file_modes: dest_path {dest_path!r} refused: path" in message
    assert "is inside the node's result store (.dispy-results)" in message
    job = cluster.submit()
    assert job is not None
    cluster.close(terminate=True)
    assert job.status in (DispyJob.Cancelled, DispyJob.Abandoned)
    assert (stored / "1.result").read_bytes() == b"another client's result"
    # The node was freed and serves the next client.
    other = cluster_factory(file_modes, [node])
    assert other.submit()() == [0o700]
    other.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_node_refuses_a_prefix_owned_by_another_user(node_factory, tmp_path):
    prefix = tmp_path / "squatted"
    prefix.mkdir(mode=0o777)
    os.chown(prefix, 54321, 54321)
    node = node_factory.one(
        name="refuses", wait=False, extra_args=["--dest_path_prefix", str(prefix)]
    )
    assert node.wait(timeout=20) == 2
    assert node.log_contains(
        f"dispy-node: --dest_path_prefix {prefix} belongs to uid 54321, not to 'root' who "
        "runs this node: that user could read clients' files and results; choose another "
        "directory (or change its owner)"
    )
    assert "Traceback" not in node.log_text()

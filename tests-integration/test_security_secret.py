"""The empty secret (issue 9, item 1): DISPY_SECRET on both sides, one warning for a role
started without a secret, and jobs that never see the secret."""

from __future__ import annotations

import logging
import stat

import pytest
from harness.computations import getenv

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)

NO_SECRET = "has no secret: anyone who can reach"

ENV_SCRIPT = """\
import os
print("DISPY_SECRET" in os.environ, os.environ.get("DISPY_SECRET"))
"""


def test_node_and_client_both_take_the_secret_from_the_environment(
    node_factory, cluster_factory, secret, monkeypatch, dispy_log
):
    # The harness gives the node its secret only as DISPY_SECRET (never on the command line).
    node = node_factory.one(cpus=1, name="env-secret")
    monkeypatch.setenv("DISPY_SECRET", secret)
    cluster = cluster_factory(getenv, [node], secret="")  # the documented default
    job = cluster.submit("DISPY_SECRET")
    assert job is not None
    assert job() is None, "a job must not see the node's secret in its environment"
    assert job.status == DispyJob.Finished, job.exception
    # The computation process and its worker are still there: neither holds the secret.
    children = node.descendants()
    assert children, "the computation's processes should be running"
    for child in children:
        assert secret not in " ".join(child.cmdline()), child.cmdline()
        assert "DISPY_SECRET" not in child.environ(), child.cmdline()
    cluster.close()
    assert not any(NO_SECRET in m for m in dispy_log.messages(logging.WARNING))
    assert node.log_count(NO_SECRET) == 0


def test_a_wrong_environment_secret_is_refused(node_factory, cluster_factory, monkeypatch, secret):
    # The client really uses DISPY_SECRET: with another value the node does not serve it.
    node = node_factory.one(cpus=1, name="env-mismatch")
    monkeypatch.setenv("DISPY_SECRET", secret + "-other")
    cluster = cluster_factory(getenv, [node], secret="")
    node.wait_log("same secret", timeout=15)
    assert cluster.nodes() == []
    cluster.close(terminate=True)


def test_a_program_job_does_not_see_the_secret(
    node_factory, cluster_factory, secret, monkeypatch, tmp_path
):
    node = node_factory.one(cpus=1, name="env-program")
    script = tmp_path / "show_env.py"
    script.write_text(ENV_SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("DISPY_SECRET", secret)
    cluster = cluster_factory(str(script), [node], secret="")
    job = cluster.submit()
    assert job is not None
    job()
    assert job.status == DispyJob.Finished, job.exception
    assert job.stdout.strip() == b"False None"
    cluster.close()


def test_node_and_client_without_a_secret_warn_exactly_once(
    node_factory, cluster_factory, monkeypatch, dispy_log
):
    monkeypatch.delenv("DISPY_SECRET", raising=False)
    node = node_factory.one(cpus=1, name="open-node", secret="")
    cluster = cluster_factory(getenv, [node], secret="")
    for n in range(3):  # several jobs, several messages: still one warning on each side
        job = cluster.submit("PATH")
        assert job is not None
        assert job() is not None, (n, job.exception)
    cluster.close()

    assert node.log_count(NO_SECRET) == 1
    assert node.log_contains(
        f"dispy-node has no secret: anyone who can reach 127.0.0.1 port {node.port} (TCP, or "
        "a UDP discovery ping) can run any code as user"
    )
    assert node.log_contains("Set the same secret on every client and node, with the "
                             "DISPY_SECRET environment variable, --secret-file PATH or "
                             "-s/--secret.")  # fmt: skip
    warnings = [m for m in dispy_log.messages(logging.WARNING) if NO_SECRET in m]
    assert len(warnings) == 1, warnings
    (warning,) = warnings
    assert warning.startswith(
        f"dispy cluster 'getenv' has no secret: anyone who can reach 127.0.0.1 port "
        f"{cluster.port} can pose as a node: receive this computation and its arguments, and "
        "send back results this program unpickles"
    )
    assert warning.endswith("with the DISPY_SECRET environment variable or JobCluster(secret=...).")


def test_node_reads_its_secret_from_a_file(node_factory, cluster_factory, secret, tmp_path):
    path = tmp_path / "node-secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    node = node_factory.one(
        cpus=1, name="file-secret", secret="", extra_args=["--secret-file", str(path)]
    )
    cluster = cluster_factory(getenv, [node])  # the test's secret, given to JobCluster
    job = cluster.submit("DISPY_SECRET")
    assert job is not None
    assert job() is None
    assert job.status == DispyJob.Finished, job.exception
    cluster.close()
    assert node.log_count(NO_SECRET) == 0
    assert secret not in " ".join(node.command())

"""TLS between client and node, with the key in its own file or inside the certificate."""

from __future__ import annotations

import subprocess
import time

import pytest
from harness import History, wait_for
from harness.computations import square_plus

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate and key made with the openssl CLI: (certfile, keyfile)."""
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=dispy-test",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("layout", ["separate", "combined"])
def test_tls_jobs_complete(node_factory, cluster_factory, certificate, tmp_path, layout):
    cert, key = certificate
    if layout == "separate":
        files = {"certfile": str(cert), "keyfile": str(key)}
        args = ["--certfile", str(cert), "--keyfile", str(key)]
    else:
        both = tmp_path / "both.pem"
        both.write_bytes(key.read_bytes() + cert.read_bytes())
        files = {"certfile": str(both)}
        args = ["--certfile", str(both)]
    node = node_factory.one(cpus=1, name=f"tls-{layout}", extra_args=args)
    assert node.log_contains("(TLS)"), node.log_text()

    history = History()
    cluster = cluster_factory(
        square_plus,
        [node],
        callback=history.callback,
        cluster_status=history.cluster_status,
        **files,
    )
    for i in range(50):
        history.submit(cluster, i)
    assert cluster.wait(timeout=30), history.summary()
    history.check(square_plus, allowed={DispyJob.Finished})
    cluster.close()


def test_tls_carries_large_arguments_and_results(node_factory, cluster_factory, certificate):
    """Large payloads inside TLS: no frame MAC, received in one buffer all the same."""
    import hashlib

    from harness.computations import echo_len

    cert, key = certificate
    node = node_factory.one(
        cpus=2, name="tls-large", extra_args=["--certfile", str(cert), "--keyfile", str(key)]
    )
    cluster = cluster_factory(echo_len, [node], certfile=str(cert), keyfile=str(key))
    payloads = [hashlib.sha256(b"%d" % i).digest() * (96 * 1024 + i) for i in range(6)]
    jobs = [cluster.submit(i, data) for i, data in enumerate(payloads)]
    for i, (job, data) in enumerate(zip(jobs, payloads, strict=True)):
        assert job() == (i, len(data), data), job.exception
    cluster.close()


def _mismatch(side, certificate):
    """(node CLI args, client kwargs) with TLS on ``side`` only."""
    cert, key = certificate
    if side == "node":
        return ["--certfile", str(cert), "--keyfile", str(key)], {}
    return [], {"certfile": str(cert), "keyfile": str(key)}


@pytest.mark.parametrize("side", ["node", "client"])
def test_tls_on_one_side_only_does_not_hang(
    node_factory, cluster_factory, certificate, dispy_log, side
):
    node_args, client_files = _mismatch(side, certificate)
    node = node_factory.one(cpus=1, name=f"tls-only-{side}", extra_args=node_args)
    history = History()
    cluster = cluster_factory(
        square_plus,
        [node],
        callback=history.callback,
        cluster_status=history.cluster_status,
        **client_files,
    )
    job = history.submit(cluster, 2)
    wait_for(lambda: dispy_log.find("no dispy node has joined"), 10, "no-node warning")
    assert not job.finish.is_set()
    assert cluster.wait(timeout=0.2) is False
    started = time.monotonic()
    cluster.close(terminate=True)
    assert time.monotonic() - started < 5
    history.check(allowed={DispyJob.Cancelled, DispyJob.Abandoned})
    assert node.running()


@pytest.mark.parametrize("side", ["node", "client"])
def test_tls_on_one_side_only_named_in_warning(
    node_factory, cluster_factory, certificate, dispy_log, side
):
    node_args, client_files = _mismatch(side, certificate)
    node = node_factory.one(cpus=1, name=f"tls-diag-{side}", extra_args=node_args)
    cluster = cluster_factory(square_plus, [node], **client_files)
    warning = wait_for(lambda: dispy_log.find("no dispy node has joined"), 10, "warning")
    cluster.close(terminate=True)
    if side == "node":
        # The client reads the node's TLS record and says what it is.
        refused = [line for line in warning.splitlines() if "refused" in line]
        assert refused, warning
        assert "TLS" in refused[0], warning
    else:
        # A TLS handshake that fails inside the TLS layer never reaches dispy's code, so
        # the client cannot name the node; its warning names TLS among the causes, and the
        # node's log says why it could not connect.
        assert "TLS" in warning, warning
        node.wait_log("does the client use TLS?")


def test_node_names_the_reason_it_cannot_reach_a_client(node_factory, cluster_factory, certificate):
    node_args, _ = _mismatch("node", certificate)
    node = node_factory.one(cpus=1, name="tls-reason", extra_args=node_args)
    cluster = cluster_factory(square_plus, [node])
    node.wait_log(f"cannot reach client at 127.0.0.1:{cluster.port}")
    cluster.close(terminate=True)
    lines = [
        line.split(f"cannot reach client at 127.0.0.1:{cluster.port}:", 1)[1].strip()
        for line in node.log_text().splitlines()
        if f"cannot reach client at 127.0.0.1:{cluster.port}:" in line
    ]
    assert lines
    assert all(lines), f"reasons: {lines!r}"

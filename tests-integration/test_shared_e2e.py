"""Shared execution end to end: real SharedJobCluster programs through a real scheduler.

One ``dispy-scheduler serve``, two or three ``dispy-node``s, and the clients are real
``dispy.SharedJobCluster``s, each in its own process where the test is about several users
(:mod:`harness.shared_clients`). Jobs record their node (the node's ``NODE_TAG``) and their
start and end times, so the tests show interleaving, fairness and exclusivity from what
actually ran, not from what the scheduler says it did. The node secret and the cluster
secret differ in every test.

Also here: wrong cluster and node secrets, TLS on both sides, ``kill -9`` of a node under a
reentrant and a non-reentrant computation, and a JobCluster refused while the scheduler
holds the nodes. The API, feature by feature, is in ``test_shared_e2e_api.py``; more cases
in ``test_shared_e2e_more.py``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import wait_for
from harness.computations import square_plus
from harness.features import Recorder
from harness.ports import LOOPBACK
from harness.shared_clients import shared_client, spans, summary
from harness.shared_inproc import SharedFactory
from harness.shared_work import mark_and_sleep, where

import dispy
from dispy import DispyJob, DispyNode

pytestmark = pytest.mark.timeout(120)

FINISHED = int(DispyJob.Finished)
NO_NODE = "no dispy node has joined cluster"


def tagged_nodes(node_factory: Any, names: list[str], cpus: int = 2) -> list[Any]:
    """Nodes whose jobs see ``NODE_TAG`` = the node's name (so a job knows where it ran)."""
    started = [
        node_factory.one(cpus=cpus, name=name, env={"NODE_TAG": name}, wait=False) for name in names
    ]
    for node in started:
        node.wait_ready()
    return started


def overlapping(rows: list[tuple[str, str, float, float]]) -> set[tuple[str, str, str]]:
    """``(node, tag a, tag b)`` for jobs of two different computations that ran on the same
    node at the same time."""
    found = set()
    for i, (tag_a, node_a, start_a, end_a) in enumerate(rows):
        for tag_b, node_b, start_b, end_b in rows[i + 1 :]:
            if node_a == node_b and tag_a != tag_b and start_a < end_b and start_b < end_a:
                found.add((node_a, *sorted((tag_a, tag_b))))
    return found


@pytest.mark.parametrize("count", [2, 3])
def test_concurrent_clients_share_the_nodes_interleaved(
    node_factory, scheduler_factory, cluster_secret, tmp_path, count
):
    nodes = tagged_nodes(node_factory, ["left", "right"])
    sched = scheduler_factory(nodes)
    marks = tmp_path / "marks"
    marks.mkdir()
    names = [f"user{i}" for i in range(count)]
    gates = {name: tmp_path / f"go-{name}" for name in names}
    clients = [
        shared_client(
            tmp_path / name,
            name=name,
            scheduler_port=sched.scheduler_port,
            secret=cluster_secret,
            jobs=60 if name == "user0" else 24,
            seconds=0.1,
            go=gates[name],
            marks=marks,
        )
        for name in names
    ]
    for client in clients:
        client.wait_line("ready", 30)
    # user0 first, until it runs on both nodes; then the others come and get CPUs as
    # user0's jobs end, next to user0's jobs still running there
    gates["user0"].write_text("go")
    wait_for(
        lambda: {p.name.rsplit(".", 1)[1] for p in marks.iterdir()} == {"left", "right"},
        30,
        "user0 should run on both nodes",
    )
    for name in names[1:]:
        gates[name].write_text("go")
    rows = []
    for client, name in zip(clients, names, strict=True):
        got = summary(client, 60)
        jobs = len(got["statuses"])
        assert got["statuses"] == [FINISHED] * jobs, got["exceptions"]
        assert [r[4] for r in got["results"]] == [n * n for n in range(jobs)]
        assert {r[0] for r in got["results"]} == {name}
        rows += spans(got["results"])
        client.wait_line("closed", 30)
        assert client.wait(10) == 0
    # every later computation ran on a node at the same time as another computation
    pairs = overlapping(rows)
    for name in names[1:]:
        assert any(name in p[1:] for p in pairs), f"{name} never shared a node: {sorted(pairs)}"
    assert {(a, b) for _, a, b in pairs} >= {("user0", "user1")}
    assert "Traceback" not in sched.log_text()


def test_a_small_client_finishes_long_before_a_big_one(
    node_factory, scheduler_factory, cluster_secret, tmp_path
):
    nodes = tagged_nodes(node_factory, ["fair-1", "fair-2"])
    sched = scheduler_factory(nodes)
    big = shared_client(
        tmp_path / "big",
        name="big",
        scheduler_port=sched.scheduler_port,
        secret=cluster_secret,
        jobs=2000,
        seconds=0.01,
    )
    big.wait_line("submitted", 30)
    small = shared_client(
        tmp_path / "small",
        name="small",
        scheduler_port=sched.scheduler_port,
        secret=cluster_secret,
        jobs=10,
        seconds=0.01,
    )
    small_got = summary(small, 60)
    big_got = summary(big, 90)
    assert small_got["statuses"] == [FINISHED] * 10
    assert big_got["statuses"] == [FINISHED] * 2000
    small_took = small_got["t_done"] - small_got["t_submit"]
    big_took = big_got["t_done"] - big_got["t_submit"]
    # 2000 jobs of 10 ms on 4 CPUs take 5 s at the very least; 10 more take a few rounds
    assert small_got["t_submit"] > big_got["t_submit"]
    assert small_took < 3.0, f"the small client took {small_took:.2f} s"
    assert big_got["t_done"] - small_got["t_done"] > 2.0, (small_took, big_took)
    big_done_first = sum(1 for r in big_got["results"] if r[3] <= small_got["t_done"])
    assert big_done_first < 1000, f"{big_done_first} big jobs ended before the small client"


def test_exclusive_waits_then_has_the_nodes_alone_and_later_ones_queue(
    node_factory, scheduler_factory, cluster_secret, tmp_path
):
    nodes = tagged_nodes(node_factory, ["ex-1", "ex-2"], cpus=1)
    sched = scheduler_factory(nodes)
    port = sched.scheduler_port

    def client(name: str, jobs: int, seconds: float, exclusive: bool = False) -> Any:
        return shared_client(
            tmp_path / name,
            name=name,
            scheduler_port=port,
            secret=cluster_secret,
            jobs=jobs,
            seconds=seconds,
            exclusive=exclusive,
        )

    first = client("first", 8, 0.6)
    first.wait_line("submitted", 30)
    excl = client("excl", 6, 0.3, exclusive=True)
    excl.wait_line("ready", 30)
    late = client("late", 6, 0.1)
    late.wait_line("ready", 30)
    later = client("later", 4, 0.1, exclusive=True)
    later.wait_line("ready", 30)
    got = {name: summary(proc, 60) for name, proc in
           (("first", first), ("excl", excl), ("late", late), ("later", later))}  # fmt: skip
    for name, data in got.items():
        assert set(data["statuses"]) == {FINISHED}, (name, data["exceptions"])
    rows = {name: spans(data["results"]) for name, data in got.items()}

    def window(name: str) -> tuple[float, float]:
        return min(r[2] for r in rows[name]), max(r[3] for r in rows[name])

    # the exclusive computation waited for the first to end, and had both nodes
    assert window("first")[1] <= window("excl")[0]
    assert {r[1] for r in rows["excl"]} == {"ex-1", "ex-2"}
    # those that came while it waited or ran queued up behind it, in the order they came
    assert window("excl")[1] <= window("late")[0]
    assert window("late")[1] <= window("later")[0]
    assert "waits for its turn" in excl.stderr_text()
    assert "waits for its turn" in late.stderr_text()
    assert not overlapping([r for rs in rows.values() for r in rs])


def test_wrong_cluster_secret_is_a_clear_error_on_both_sides(
    node_factory, scheduler_factory, tmp_path
):
    node = node_factory.one(cpus=1, name="guarded")
    sched = scheduler_factory([node])
    client = shared_client(
        tmp_path / "wrong",
        name="wrong",
        scheduler_port=sched.scheduler_port,
        secret="not-the-cluster-secret",
        jobs=1,
    )
    line = client.wait_line(lambda text: text.startswith("error "), 30)
    assert f"{LOOPBACK}:{sched.scheduler_port}" in line, line
    assert "secret" in line, line
    assert client.wait(10) == 3
    sched.wait_log("refused: it does not use this scheduler's --cluster_secret")


@pytest.fixture
def shared_factory(scheduler_factory, cluster_secret):
    """Real SharedJobClusters in this process; after ``scheduler_factory`` so they close
    before the scheduler stops."""
    factory = SharedFactory(cluster_secret)
    yield factory
    problems = factory.teardown()
    if problems:
        pytest.fail("shared cluster teardown:\n  " + "\n  ".join(problems))


def test_a_node_with_the_wrong_node_secret_is_never_used(
    node_factory, scheduler_factory, shared_factory
):
    good = tagged_nodes(node_factory, ["good"])[0]
    bad = node_factory.one(
        cpus=2, name="bad", secret="not-the-node-secret", env={"NODE_TAG": "bad"}
    )
    sched = scheduler_factory([good], also=[bad])
    sched.wait_log(f"node at {LOOPBACK}:", timeout=20)
    sched.wait_log("refused: it does not use this scheduler's --node_secret", timeout=20)
    cluster = shared_factory(where, sched)
    jobs = [cluster.submit(n) for n in range(12)]
    assert cluster.wait(timeout=30)
    assert {job.result for job in jobs} == {("good", n * n) for n in range(12)}
    assert [(n.ip_addr, n.port) for n in cluster.nodes()] == [good.address]
    cluster.close()
    assert not bad.log_contains("computation")


def test_tls_toward_nodes_and_toward_clients(
    node_factory, scheduler_factory, shared_factory, cluster_secret, tmp_path
):
    node_cert, node_key = make_certificate(tmp_path, "nodes")
    client_cert, client_key = make_certificate(tmp_path, "clients")
    tls_args = ["--certfile", str(node_cert), "--keyfile", str(node_key)]
    nodes = [
        node_factory.one(cpus=1, name=name, env={"NODE_TAG": name}, extra_args=tls_args)
        for name in ("tls-1", "tls-2")
    ]
    sched = scheduler_factory(
        nodes,
        "--node_certfile", str(node_cert), "--node_keyfile", str(node_key),
        "--cluster_certfile", str(client_cert), "--cluster_keyfile", str(client_key),
    )  # fmt: skip
    cluster = shared_factory(
        mark_and_sleep, sched, certfile=str(client_cert), keyfile=str(client_key)
    )
    wait_for(lambda: len(cluster.nodes()) == 2, 20, "both nodes through TLS")
    jobs = [cluster.submit(str(tmp_path), n, 0.2) for n in range(8)]
    assert cluster.wait(timeout=30)
    assert sorted(job.result[1] for job in jobs) == list(range(8))
    assert {job.result[0] for job in jobs} == {"tls-1", "tls-2"}
    cluster.close()
    # no TLS, or the nodes' certificate toward the clients: a clear error naming TLS
    for tls in ({}, {"certfile": str(node_cert), "keyfile": str(node_key)}):
        with pytest.raises(dispy.SchedulerError) as refused:
            shared_factory(where, sched, msg_timeout=5, **tls)
        text = str(refused.value)
        assert f"{LOOPBACK}:{sched.scheduler_port}" in text, text
        assert "TLS" in text, text


@pytest.mark.parametrize("reentrant", [True, False])
def test_node_kill_9_moves_or_cancels_its_jobs(
    node_factory, scheduler_factory, shared_factory, tmp_path, reentrant
):
    victim, survivor = tagged_nodes(node_factory, ["victim", "survivor"], cpus=1)
    sched = scheduler_factory([victim, survivor], "--pulse_interval", "1")
    history = Recorder()
    cluster = shared_factory(
        mark_and_sleep,
        sched,
        reentrant=reentrant,
        callback=history.callback,
        cluster_status=history.cluster_status,
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    jobs = [cluster.submit(str(marks), n, 2.0) for n in range(4)]
    for n, job in enumerate(jobs):
        job.id = n
    started = wait_for(
        lambda: [p.name for p in marks.iterdir() if p.name.endswith(".victim")],
        20,
        "a job should start on the victim",
    )
    on_victim = {int(name.split(".")[0]) for name in started}
    victim.kill()
    assert cluster.wait(timeout=60), [job.status for job in jobs]
    victim_name = f"{LOOPBACK}:{victim.port}"
    for n, job in enumerate(jobs):
        assert len(history.calls_for(n)) == 1, history.calls_for(n)  # ended exactly once
        if reentrant:
            assert job.status == DispyJob.Finished, (n, job.status, job.exception)
            if n in on_victim:
                assert job.result == ("survivor", n)
        elif n in on_victim:
            assert job.status == DispyJob.Cancelled, (n, job.status)
            assert victim_name in str(job.exception), job.exception
        else:
            assert job.status in (DispyJob.Finished, DispyJob.Cancelled), job.status
    abandoned = wait_for(
        lambda: history.node_events(DispyNode.AbandonedNode), 20, "the victim abandoned"
    )
    assert {(node.ip_addr, node.port) for node in abandoned} == {victim.address}
    assert any(job.status == DispyJob.Finished for job in jobs)
    cluster.close()


def test_a_job_cluster_is_refused_while_the_scheduler_holds_the_nodes(
    node_factory, scheduler_factory, shared_factory, cluster_factory, dispy_log
):
    nodes = tagged_nodes(node_factory, ["held-1", "held-2"], cpus=1)
    sched = scheduler_factory(nodes)
    shared = shared_factory(where, sched)
    first = [shared.submit(n) for n in range(6)]
    assert shared.wait(timeout=30)
    alone = cluster_factory(square_plus, nodes, ping_interval=1)
    waiting = alone.submit(3)
    warning = wait_for(lambda: dispy_log.find(NO_NODE), 15, "the JobCluster's no-node warning")
    assert "node is serving a scheduler" in warning, warning
    assert waiting.status == DispyJob.Created
    # the shared cluster goes on undisturbed
    more = [shared.submit(n) for n in range(6, 12)]
    assert shared.wait(timeout=30)
    assert [job.result[1] for job in first + more] == [n * n for n in range(12)]
    assert all(job.status == DispyJob.Finished for job in first + more)
    shared.close()
    # once the scheduler is gone, the nodes let the refused JobCluster in
    assert sched.stop() == 0
    assert waiting.finish.wait(20), "the JobCluster should get a node after the scheduler"
    assert waiting.result == square_plus(3)
    alone.close()


def make_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made with the openssl CLI."""
    cert, key = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key

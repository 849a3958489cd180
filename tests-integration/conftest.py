"""Fixtures of the integration suite: real ``dispy-node`` processes and JobClusters on loopback.

Every test gets its own secret, its own free ports and its own directories, so tests can run
in parallel (``pytest -n 2``). At teardown the suite checks that clusters closed in time, that
every node still running stops on SIGINT with status 0, and that no node or job process is
left behind. When a test fails, the logs of its nodes and of the client are attached to the
report.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# pytest runs with --import-mode=importlib, which does not put test directories on sys.path.
sys.path.insert(0, os.path.dirname(__file__))

from harness import (
    LogCapture,
    NodeProcess,
    computations,
    netns,
)
from harness.procs import check_no_leaks, dispy_children
from harness.scheduler import SchedulerFactory, SchedulerProcess
from harness.shared_recovery import SharedClients

import dispy

computations.ship_by_value()

NODES = pytest.StashKey[list[NodeProcess]]()
SCHEDULERS = pytest.StashKey[list[SchedulerProcess]]()
CLIENT_LOG = pytest.StashKey[LogCapture]()
LOG_TAIL = 30_000
CLOSE_TIMEOUT = 30.0


# Figures a test reports with ``record_property`` for the reader of the run, not as
# assertions (e.g. how long discovery of 16 nodes took): printed at the end of the run, also
# under xdist, which hides a test's own output.
REPORTED_PROPERTIES = ("discovery_seconds",)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = []
    for report in terminalreporter.stats.get("passed", []):
        for name, value in getattr(report, "user_properties", ()):
            if name in REPORTED_PROPERTIES:
                lines.append(f"{report.nodeid}: {name} = {value}")
    if lines:
        terminalreporter.write_sep("-", "figures reported by tests")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for node in item.stash.get(NODES, []):
            text = node.log_text()
            if len(text) > LOG_TAIL:
                text = f"... ({len(text) - LOG_TAIL} characters cut)\n" + text[-LOG_TAIL:]
            report.sections.append((f"dispy-node {node.name} log ({node.log_path})", text))
        for sched in item.stash.get(SCHEDULERS, []):
            text = sched.log_text()
            if len(text) > LOG_TAIL:
                text = f"... ({len(text) - LOG_TAIL} characters cut)\n" + text[-LOG_TAIL:]
            report.sections.append((f"dispy-scheduler log ({sched.log_path})", text))
        capture = item.stash.get(CLIENT_LOG, None)
        if capture is not None and capture.records:
            report.sections.append(("dispy client log", capture.text()))
    return report


@pytest.fixture(autouse=True)
def no_process_leak() -> Iterator[None]:
    """No ``dispy-node`` or job process started by the test may outlive it."""
    yield
    leaked = check_no_leaks([dispy_children])
    if leaked:
        pytest.fail("processes left behind (now killed):\n  " + "\n  ".join(leaked))


@pytest.fixture(autouse=True)
def dispy_log(request: pytest.FixtureRequest) -> Iterator[LogCapture]:
    """Every record of the client's ``dispy`` logger during the test.

    The logger does not propagate, so ``caplog`` cannot see it; this handler can.
    """
    capture = LogCapture("dispy").attach()
    propagate = capture.logger.propagate
    capture.logger.propagate = False
    request.node.stash[CLIENT_LOG] = capture
    yield capture
    capture.detach()
    capture.logger.propagate = propagate


@pytest.fixture
def secret() -> str:
    return "s-" + secrets.token_hex(16)


@pytest.fixture
def client_kwargs(secret: str) -> dict[str, Any]:
    """What every JobCluster of a test needs to stay on loopback with the test's secret."""
    return {"ip_addr": "127.0.0.1", "port": 0, "secret": secret, "loglevel": logging.INFO}


class NodeFactory:
    """Starts ``dispy-node`` processes for one test; stops and checks them at the end."""

    def __init__(self, tmp_path: Path, secret: str, request: pytest.FixtureRequest) -> None:
        self._tmp = tmp_path
        self._secret = secret
        self.nodes: list[NodeProcess] = []
        request.node.stash[NODES] = self.nodes

    def __call__(
        self,
        n: int = 1,
        *,
        cpus: int = 1,
        name: str = "node",
        secret: str | None = None,
        wait: bool = True,
        **kwargs: Any,
    ) -> list[NodeProcess]:
        """Start ``n`` nodes named ``name``, ``name-2``, ...; by default wait until they serve.

        Keyword arguments go to :class:`NodeProcess` (``env``, ``extra_args``, ``stdin``,
        ``port``, ``debug``).
        """
        started = []
        for i in range(n):
            node_name = name if n == 1 else f"{name}-{i + 1}"
            taken = {node.name for node in self.nodes}
            if node_name in taken:
                node_name = f"{node_name}-{len(self.nodes) + 1}"
            node = NodeProcess(
                self._tmp / node_name,
                name=node_name,
                secret=self._secret if secret is None else secret,
                cpus=cpus,
                **kwargs,
            )
            self.nodes.append(node)
            started.append(node.start(wait=False))
        if wait:
            for node in started:
                node.wait_started()
        return started

    def one(self, **kwargs: Any) -> NodeProcess:
        return self(1, **kwargs)[0]

    def teardown(self) -> list[str]:
        problems = []
        for node in self.nodes:
            if not node.running():
                continue  # the test stopped or killed it itself
            code = node.stop(timeout=15)
            if node.needed_sigkill:
                problems.append(f"{node.name} ignored SIGINT for 15 s and was killed")
            elif code != 0:
                problems.append(f"{node.name} exited with status {code} on SIGINT")
        leaked = check_no_leaks([n.leftover_processes for n in self.nodes])
        for node in self.nodes:
            node.cleanup()
        if leaked:
            listing = "\n    ".join(leaked)
            problems.append(f"node processes left behind (now killed):\n    {listing}")
        return problems


@pytest.fixture
def node_factory(
    tmp_path: Path, secret: str, request: pytest.FixtureRequest
) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path, secret, request)
    yield factory
    problems = factory.teardown()
    if problems:
        pytest.fail("node teardown:\n  " + "\n  ".join(problems))


class ClusterFactory:
    """Creates JobClusters for one test and closes (terminate=True) any left open."""

    def __init__(self, client_kwargs: dict[str, Any]) -> None:
        self._defaults = client_kwargs
        self.clusters: list[dispy.JobCluster] = []

    def __call__(
        self,
        computation: Callable[..., Any],
        nodes: list[NodeProcess] | list[tuple[str, int]],
        **kwargs: Any,
    ) -> dispy.JobCluster:
        addresses = [n.address if isinstance(n, NodeProcess) else n for n in nodes]
        options = {**self._defaults, **kwargs}
        cluster = dispy.JobCluster(computation, nodes=addresses, **options)
        self.clusters.append(cluster)
        return cluster

    def teardown(self) -> list[str]:
        problems = []
        for cluster in self.clusters:
            if cluster._closed:
                continue
            closer = threading.Thread(
                target=cluster.close, kwargs={"terminate": True}, name="close-cluster", daemon=True
            )
            closer.start()
            closer.join(CLOSE_TIMEOUT)
            if closer.is_alive():
                problems.append(
                    f"cluster {cluster.name}: close(terminate=True) still running after "
                    f"{CLOSE_TIMEOUT:g} s"
                )
        return problems


@pytest.fixture
def cluster_factory(
    client_kwargs: dict[str, Any], node_factory: NodeFactory
) -> Iterator[ClusterFactory]:
    """Depends on ``node_factory`` so clusters close before their nodes stop."""
    before = {t.ident for t in threading.enumerate()}
    factory = ClusterFactory(client_kwargs)
    yield factory
    problems = factory.teardown()
    if not problems:
        leaked = [
            t.name
            for t in threading.enumerate()
            if t.ident not in before and t.name.startswith("dispy-") and t.is_alive()
        ]
        if leaked:
            problems.append(f"client threads still running after close: {leaked}")
    if problems:
        pytest.fail("cluster teardown:\n  " + "\n  ".join(problems))


@pytest.fixture
def topology() -> Iterator[netns.Topology]:
    """Network namespaces for one test (:mod:`harness.netns`), deleted at teardown.

    Ask for it before ``node_factory`` so that nodes stop before their namespaces go.
    Skips when namespaces are not available here, unless ``DISPY_REQUIRE_NETNS`` is set
    (``.ci/run`` sets it when running as root): then that is a failure.
    """
    reason = netns.unavailable()
    if reason is not None:
        if os.environ.get("DISPY_REQUIRE_NETNS"):
            pytest.fail(f"DISPY_REQUIRE_NETNS is set but {reason}")
        pytest.skip(reason)
    swept = netns.sweep()
    if swept:
        print(f"removed namespaces left by an earlier run: {swept}")
    with netns.Topology() as topo:
        yield topo


@pytest.fixture
def cluster_secret() -> str:
    """The secret between SharedJobClusters and the scheduler (not the nodes' ``secret``)."""
    return "cluster-" + secrets.token_hex(8)


@pytest.fixture
def scheduler_factory(
    tmp_path: Path,
    secret: str,
    cluster_secret: str,
    node_factory: NodeFactory,
    request: pytest.FixtureRequest,
) -> Iterator[SchedulerFactory]:
    """``dispy-scheduler serve`` processes (node secret ``secret``, cluster secret
    ``cluster_secret``); depends on ``node_factory`` so schedulers stop before nodes."""
    factory = SchedulerFactory(tmp_path, secret, cluster_secret)
    request.node.stash[SCHEDULERS] = factory.started
    yield factory
    problems = factory.teardown()
    if problems:
        pytest.fail("scheduler teardown:\n  " + "\n  ".join(problems))


@pytest.fixture
def shared_clients(tmp_path: Path, cluster_secret: str) -> Iterator[SharedClients]:
    """SharedJobCluster client processes (harness.shared_recovery), killed at the end."""
    started = SharedClients(tmp_path, cluster_secret)
    yield started
    started.teardown()

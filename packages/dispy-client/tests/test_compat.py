"""dispy 4.15 spellings of the client's API (issue 13) that need no node."""

from __future__ import annotations

import logging
import socket

import pytest

import dispy
from dispy._compat import ComputationName, dispy_port_ports, pick, pick_callback


def compute(n):
    return n


@pytest.fixture(autouse=True)
def dispy_logging_restored():
    # A cluster that fails after setting up logging leaves a handler bound to this test's
    # captured stderr; later tests that read their own stderr would see nothing.
    logger = logging.getLogger("dispy")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_logger_has_level_names_and_msg_timeout():
    assert dispy.logger is logging.getLogger("dispy")
    assert (dispy.logger.DEBUG, dispy.logger.INFO, dispy.logger.ERROR) == (10, 20, 40)
    assert dispy.MsgTimeout > 0
    assert isinstance(dispy.__version__, str)


def test_httpd_import_says_it_comes_later():
    with pytest.raises(ImportError, match="later release"):
        import dispy.httpd  # noqa: F401


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ipv4_udp_multicast": True}, "ipv4_udp_multicast"),
        ({"poll_interval": 10}, "poll_interval"),
        ({"host": "127.0.0.1", "ip_addr": "127.0.0.2"}, "ip_addr or host"),
        ({"dispy_port": 70000}, "dispy_port"),
    ],
)
def test_job_cluster_refuses_what_it_cannot_honour(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dispy.JobCluster(compute, nodes=["127.0.0.1"], **kwargs)


def test_shared_cluster_refuses_polling_and_conflicts():
    with pytest.raises(ValueError, match="poll_interval"):
        dispy.SharedJobCluster(compute, poll_interval=5)
    with pytest.raises(ValueError, match="scheduler_node or scheduler_host"):
        dispy.SharedJobCluster(compute, scheduler_node="a", scheduler_host="b")


def test_dispy_port_is_the_client_port_with_nodes_on_the_next():
    assert dispy_port_ports(None, 1, 2) == (1, 2)
    assert dispy_port_ports(9700, 1, 2) == (9700, 9701)


def test_job_status_is_the_callback_and_wins_over_it():
    def a(job):
        pass

    def b(job):
        pass

    assert pick_callback(a, None) is a
    assert pick_callback(None, b) is b
    assert pick_callback(a, b) is b
    assert pick("x", None, "o", "t") == "x"
    assert pick(None, "y", "o", "t") == "y"


def test_shared_dispy_port_puts_the_scheduler_two_ports_up():
    # a port nothing listens on (bound, not listening): the error names it, P + 2
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(dispy.SchedulerError, match=f"port {port}"):
            dispy.SharedJobCluster(
                compute, scheduler_host="127.0.0.1", dispy_port=port - 2, secret="x"
            )


def test_415_positional_arguments_that_cannot_mean_ours_are_refused():
    def job_status(job):
        pass

    def cluster_status(status, node, job):
        pass

    # JobCluster(computation, nodes, depends, job_status, cluster_status, host, dispy_port,
    # ext_host, ...) in 4.15.2: the 4th to 6th mean the same here; a port as 7th does not.
    with pytest.raises(TypeError, match=r"where dispy 4\.15\.2 took dispy_port"):
        dispy.JobCluster(compute, ["127.0.0.1"], [], job_status, None, "127.0.0.1", 9700)
    with pytest.raises(TypeError, match=r"where dispy 4\.15\.2 took ext_host"):
        dispy.JobCluster(compute, ["127.0.0.1"], [], None, None, None, None, "10.0.0.1")
    # SharedJobCluster(computation, nodes, depends, job_status, cluster_status, ...)
    with pytest.raises(TypeError, match=r"where dispy 4\.15\.2 took job_status"):
        dispy.SharedJobCluster(compute, ["127.0.0.1"], [], job_status)
    with pytest.raises(TypeError, match=r"where dispy 4\.15\.2 took cluster_status"):
        dispy.SharedJobCluster(compute, ["127.0.0.1"], [], None, cluster_status)


def test_computation_name_is_a_string_and_callable_as_in_415():
    name = ComputationName("compute")
    assert name == "compute"
    assert name() == "compute"
    assert "%s" % name == "compute"  # noqa: UP031  (as a 4.15 program prints it)
    assert type(name()) is str

"""The public API of the dispy package is what the reference documents."""

from __future__ import annotations

import dispy


def test_all_is_importable_and_sorted():
    assert dispy.__all__ == sorted(dispy.__all__)
    for name in dispy.__all__:
        assert getattr(dispy, name) is not None


def test_reference_names_are_exported():
    expected = {
        "DispyJob",
        "DispyNode",
        "DispyNodeAvailInfo",
        "JobCluster",
        "NodeAllocate",
        "SharedJobCluster",
        "recover_jobs",
    }
    assert expected <= set(dispy.__all__)


def test_the_shared_cluster_error_can_be_caught_by_its_public_name():
    # SharedJobCluster's constructor raises it (scheduler unreachable, wrong secret, TLS)
    assert issubclass(dispy.SchedulerError, ConnectionError)
    assert "SchedulerError" in dispy.__all__


def test_version_is_a_string():
    assert isinstance(dispy.__version__, str)


def test_the_shared_cluster_error_is_exported():
    # SharedJobCluster() raises it (its docstring says so): a program catches it by name.
    assert issubclass(dispy.SchedulerError, ConnectionError)
    assert dispy.SchedulerError is dispy.shared.SchedulerError

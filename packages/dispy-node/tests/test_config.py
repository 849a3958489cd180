"""The node's settings and CPU count (dispy_node.config)."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from dispy_node.config import NodeConfig, resolve_cpus


@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        (0, 8, 8),  # 0 = all
        (1, 8, 1),
        (8, 8, 8),  # every CPU is allowed
        (-1, 8, 7),  # negative leaves that many unused
        (-7, 8, 1),
        (0, 1, 1),
    ],
)
def test_resolve_cpus(requested, available, expected):
    assert resolve_cpus(requested, available) == expected


def test_resolve_cpus_refuses_more_than_available():
    with pytest.raises(ValueError, match="--cpus 9 is more than the 8 CPUs of this machine"):
        resolve_cpus(9, 8)


@pytest.mark.parametrize("requested", [-8, -9, -100])
def test_resolve_cpus_refuses_leaving_no_cpu(requested):
    with pytest.raises(ValueError, match=f"--cpus {requested} would leave no CPU to use"):
        resolve_cpus(requested, 8)


def test_node_config_defaults_match_the_reference(tmp_path):
    config = NodeConfig()
    assert config.node_port == 51348
    assert config.cpus == 0
    assert config.secret == ""
    assert config.max_file_size == 10 * 1024 * 1024
    assert config.msg_timeout == 5.0
    assert os.path.isabs(config.dest_path_prefix)


def test_node_config_makes_dest_path_prefix_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert NodeConfig(dest_path_prefix="rel").dest_path_prefix == str(tmp_path / "rel")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert NodeConfig(dest_path_prefix="~/x").dest_path_prefix == str(tmp_path / "x")


@pytest.mark.parametrize(
    "values",
    [
        {"node_port": 70000},
        {"msg_timeout": 0},
        {"max_file_size": -1},
        {"zombie_interval": 0},
        {"unknown_option": 1},
    ],
)
def test_node_config_refuses_invalid_values(values):
    with pytest.raises(ValidationError):
        NodeConfig(**values)

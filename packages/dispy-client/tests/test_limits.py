"""What cannot travel as one message is refused on the client, with the reason."""

from __future__ import annotations

import pytest

import dispy
from dispy import _depends, _facade
from dispy._depends import DependencyError, read_file


def echo(x: bytes) -> bytes:
    return x


def test_file_over_the_message_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(_depends, "DEFAULT_MAX_MESSAGE", 10)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 11)
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 10)
    with pytest.raises(DependencyError, match="11 bytes, over the 10 bytes one message can carry"):
        read_file(str(big), "big.bin")
    assert read_file(str(small), "small.bin").data == b"x" * 10


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DependencyError, match="cannot be read"):
        read_file(str(tmp_path / "absent"), "absent")


def test_arguments_over_the_message_limit_are_refused_at_submit(monkeypatch, capsys):
    monkeypatch.setattr(_facade, "DEFAULT_MAX_MESSAGE", 100_000)
    # no node is needed: the arguments are refused before anything is sent
    jc = dispy.JobCluster(echo, nodes=["127.0.0.1"], ip_addr="127.0.0.1", port=0, node_port=9)
    try:
        assert jc.submit(b"x" * 200_000) is None  # as for any job that cannot be created
        assert "over the 100000 bytes one message can carry" in capsys.readouterr().err
        job = jc.submit(b"x" * 1000)  # a smaller one is accepted (and waits for a node)
        assert job is not None
        jc.cancel(job)
    finally:
        jc.close(timeout=5, terminate=True)


@pytest.mark.parametrize(
    ("computation", "kwargs", "expected"),
    [
        ("prog\x00ram", {}, "holds a NUL"),
        ("", {}, "is empty"),
        (echo, {"dest_path": "work\x00dir"}, "dest_path must be at most 4096 characters"),
        (echo, {"dest_path": "d" * 4097}, "dest_path must be at most 4096 characters"),
    ],
)
def test_what_no_node_would_accept_is_refused_at_once(computation, kwargs, expected):
    # Nothing is started: the check comes before any socket or thread.
    with pytest.raises(ValueError, match=expected):
        dispy.JobCluster(computation, nodes=["127.0.0.1"], ip_addr="127.0.0.1", port=0, **kwargs)

"""Files sent by jobs land inside the client's directory (dispy._files.safe_local_path)."""

from __future__ import annotations

import os

import pytest

from dispy._files import safe_local_path
from dispy_core.files import store_file


def test_relative_path_lands_under_base(tmp_path):
    assert safe_local_path(str(tmp_path), "out/result.txt") == str(tmp_path / "out" / "result.txt")
    assert safe_local_path(str(tmp_path), "out\\r.txt") == str(tmp_path / "out" / "r.txt")


@pytest.mark.parametrize("path", ["/etc/passwd", "\\evil"])
def test_absolute_path_is_refused(tmp_path, path):
    with pytest.raises(ValueError, match="absolute paths are not accepted"):
        safe_local_path(str(tmp_path), path)


@pytest.mark.parametrize("path", ["..", "../x", "a/../../x", "a\\..\\x", "", ".", "./"])
def test_dot_dot_or_empty_path_is_refused(tmp_path, path):
    with pytest.raises(ValueError, match="must stay inside"):
        safe_local_path(str(tmp_path), path)


def test_symlink_leading_out_is_refused(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (base / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="leads outside"):
        safe_local_path(str(base), "link/x.txt")


def test_store_file_writes_contents_mode_and_mtime(tmp_path):
    path = str(tmp_path / "sub" / "f.bin")
    store_file(path, b"\x00data", 0o640, 1_700_000_000.0)
    with open(path, "rb") as fh:
        assert fh.read() == b"\x00data"
    stat = os.stat(path)
    assert stat.st_mode & 0o777 == 0o640
    assert stat.st_mtime == 1_700_000_000.0
    assert os.listdir(tmp_path / "sub") == ["f.bin"]  # no temporary file left behind


# --- files arriving from a peer are private and written without following links ---------------


@pytest.mark.parametrize(("asked", "given"), [(0o777, 0o750), (0o666, 0o640), (0o4755, 0o750)])
def test_store_file_masks_the_senders_mode(tmp_path, asked, given):
    path = tmp_path / "sub" / "f"
    old = os.umask(0)
    try:
        store_file(str(path), b"x", asked, None)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o7777 == given
    assert os.stat(tmp_path / "sub").st_mode & 0o007 == 0  # the directory it made, too


def test_store_file_does_not_follow_a_link_planted_at_its_temporary_name(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "f.bin.dispy-part").symlink_to(victim)
    store_file(str(tmp_path / "f.bin"), b"attacker's bytes", 0o644, None)
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "f.bin").read_bytes() == b"attacker's bytes"
    assert not (tmp_path / "f.bin").is_symlink()


def test_store_file_replaces_a_link_at_the_target_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "f.bin").symlink_to(victim)
    store_file(str(tmp_path / "f.bin"), b"new", 0o600, None)
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "f.bin").read_bytes() == b"new"

"""A computation's files never leave its directory (dispy_node._paths)."""

from __future__ import annotations

import os

import pytest

from dispy_node._paths import UnsafePathError, computation_dir, safe_join


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base"
    path.mkdir()
    return path


# --- safe_join -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "parts"),
    [
        ("data.txt", ["data.txt"]),
        ("sub/dir/data.txt", ["sub", "dir", "data.txt"]),
        ("./sub//data.txt", ["sub", "data.txt"]),
        ("sub\\data.txt", ["sub", "data.txt"]),
        ("sub/", ["sub"]),
        ("..data", ["..data"]),
    ],
)
def test_safe_join_keeps_relative_paths_inside(base, relative, parts):
    assert safe_join(str(base), relative) == os.path.join(str(base), *parts)


@pytest.mark.parametrize("relative", ["/etc/passwd", "//server/share", "\\windows\\system32"])
def test_safe_join_refuses_absolute_paths(base, relative):
    with pytest.raises(UnsafePathError, match="must be relative"):
        safe_join(str(base), relative)


@pytest.mark.parametrize(
    "relative", ["..", "../x", "a/../../x", "a/..", "a\\..\\..\\x", "./../x", "sub/../sub/x"]
)
def test_safe_join_refuses_dot_dot(base, relative):
    with pytest.raises(UnsafePathError, match=r"may not contain '\.\.'"):
        safe_join(str(base), relative)


@pytest.mark.parametrize("relative", ["", ".", "./", ".//."])
def test_safe_join_refuses_paths_naming_no_file(base, relative):
    with pytest.raises(UnsafePathError, match="names no file"):
        safe_join(str(base), relative)


def test_safe_join_refuses_a_symlink_leading_out(base, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (base / "link").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="leads outside its directory"):
        safe_join(str(base), "link/stolen.txt")
    with pytest.raises(UnsafePathError, match="leads outside"):
        safe_join(str(base), "link")


def test_safe_join_refuses_a_symlinked_file_leading_out(base, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    (base / "innocent.txt").symlink_to(secret)
    with pytest.raises(UnsafePathError, match="leads outside"):
        safe_join(str(base), "innocent.txt")


def test_safe_join_refuses_a_symlink_to_a_sibling_sharing_the_prefix(base, tmp_path):
    sibling = tmp_path / "base-evil"  # starts with the base's name
    sibling.mkdir()
    (base / "link").symlink_to(sibling)
    with pytest.raises(UnsafePathError, match="leads outside"):
        safe_join(str(base), "link/x")


def test_safe_join_allows_a_symlink_that_stays_inside(base):
    (base / "real").mkdir()
    (base / "alias").symlink_to(base / "real")
    assert safe_join(str(base), "alias/x") == os.path.join(str(base), "alias", "x")


def test_unsafe_path_error_is_a_value_error():
    assert issubclass(UnsafePathError, ValueError)


# --- computation_dir ---------------------------------------------------------------------------


def test_computation_dir_without_dest_path_is_fresh_and_inside_prefix(tmp_path):
    prefix = tmp_path / "prefix"
    first = computation_dir(str(prefix), None, "my comp!/..", 3)
    second = computation_dir(str(prefix), None, "my comp!/..", 3)
    assert first != second
    for path in (first, second):
        assert os.path.isdir(path)
        assert os.path.dirname(path) == str(prefix)
        assert os.path.basename(path).startswith("my_comp__..-3-")


def test_computation_dir_with_empty_name_still_gets_a_name(tmp_path):
    path = computation_dir(str(tmp_path), None, "", 1)
    assert os.path.basename(path).startswith("computation-1-")


def test_computation_dir_with_relative_dest_path(tmp_path):
    path = computation_dir(str(tmp_path), "jobs/run1", "c", 1)
    assert path == os.path.join(str(tmp_path), "jobs", "run1")
    assert os.path.isdir(path)


def test_computation_dir_puts_absolute_dest_path_under_prefix(tmp_path):
    prefix = tmp_path / "prefix"
    path = computation_dir(str(prefix), "/var/data/run1", "c", 1)
    assert path == os.path.join(str(prefix), "var", "data", "run1")
    assert os.path.isdir(path)


def test_computation_dir_is_reused_for_the_same_dest_path(tmp_path):
    first = computation_dir(str(tmp_path), "shared", "c", 1)
    (tmp_path / "shared" / "kept.txt").write_text("x")
    assert computation_dir(str(tmp_path), "shared", "c", 2) == first
    assert (tmp_path / "shared" / "kept.txt").exists()


@pytest.mark.parametrize("dest_path", ["../escape", "/../escape", "a/../../escape"])
def test_computation_dir_refuses_dest_path_escaping_prefix(tmp_path, dest_path):
    prefix = tmp_path / "prefix"
    with pytest.raises(UnsafePathError):
        computation_dir(str(prefix), dest_path, "c", 1)
    assert not (tmp_path / "escape").exists()

"""A computation's files never leave its directory (dispy_node._paths)."""

from __future__ import annotations

import os

import pytest

from dispy_node._paths import (
    PrefixError,
    UnsafePathError,
    computation_dir,
    prepare_prefix,
    safe_join,
)


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


# --- the node's own result store is not a computation directory (issue 9, item 9) -------------


@pytest.mark.parametrize(
    "dest_path", [".dispy-results", "/.dispy-results", "./.dispy-results/", ".dispy-results/7"]
)
def test_computation_dir_refuses_dest_path_naming_the_result_store(tmp_path, dest_path):
    # A computation there would see (and its cleanup would delete) other clients' results.
    store = tmp_path / ".dispy-results" / "7"
    store.mkdir(parents=True)
    (store / "1.result").write_bytes(b"someone else's result")
    with pytest.raises(UnsafePathError, match="result store"):
        computation_dir(str(tmp_path), dest_path, "c", 1)
    assert (store / "1.result").exists()


def test_computation_dir_refuses_a_link_to_the_result_store(tmp_path):
    (tmp_path / ".dispy-results").mkdir()
    (tmp_path / "innocent").symlink_to(tmp_path / ".dispy-results")
    with pytest.raises(UnsafePathError, match="result store"):
        computation_dir(str(tmp_path), "innocent", "c", 1)


def test_computation_dir_refuses_a_link_to_the_prefix_itself(tmp_path):
    (tmp_path / "here").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="dest_path_prefix itself"):
        computation_dir(str(tmp_path), "here", "c", 1)


def test_computation_dir_allows_names_that_only_start_like_the_store(tmp_path):
    path = computation_dir(str(tmp_path), ".dispy-results-mine", "c", 1)
    assert path == os.path.join(str(tmp_path), ".dispy-results-mine")


@pytest.mark.parametrize("dest_path", [None, "jobs/run1"])
def test_computation_dirs_are_private(tmp_path, dest_path):
    old = os.umask(0)  # even a permissive umask must not open them to others
    try:
        path = computation_dir(str(tmp_path / "prefix"), dest_path, "c", 1)
    finally:
        os.umask(old)
    folder = path
    while folder != str(tmp_path):
        assert os.stat(folder).st_mode & 0o077 == 0, folder
        folder = os.path.dirname(folder)


# --- the node's prefix: private, and its own (issue 9, item 9) --------------------------------

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root"
)
OTHER_UID = 54321  # no user on the test machine has it


def _prepare(prefix, clean=False):
    # The node's own entry point, so the test covers what `dispy-node run` does.
    from dispy_node.node import NodeStartError, _prepare_prefix

    try:
        _prepare_prefix(str(prefix), clean)
    except NodeStartError as exc:
        raise PrefixError(str(exc)) from None


def test_prepare_prefix_creates_it_and_its_parents_private(tmp_path):
    prefix = tmp_path / "a" / "b" / "prefix"
    old = os.umask(0)
    try:
        _prepare(prefix)
    finally:
        os.umask(old)
    for folder in (prefix, prefix.parent, prefix.parent.parent):
        assert folder.stat().st_mode & 0o777 == 0o700, folder


def test_prepare_prefix_keeps_an_existing_private_prefix(tmp_path):
    prefix = tmp_path / "prefix"
    prefix.mkdir(mode=0o700)
    (prefix / "kept").write_text("x")
    assert prepare_prefix(str(prefix), False) is None
    assert (prefix / "kept").exists()


def test_prepare_prefix_warns_about_an_existing_prefix_open_to_others(tmp_path):
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    prefix.chmod(0o755)
    warning = prepare_prefix(str(prefix), False)
    assert warning is not None
    assert "mode 0755" in warning
    assert f"chmod 700 {prefix}" in warning


def test_prepare_prefix_refuses_a_file(tmp_path):
    (tmp_path / "prefix").write_text("x")
    with pytest.raises(PrefixError, match="is not a directory"):
        _prepare(tmp_path / "prefix")


@needs_root
def test_prepare_prefix_refuses_a_prefix_owned_by_another_user(tmp_path):
    # The attack: another local user creates the (predictable) prefix first, then reads
    # every client's files and results, or plants links the node writes through.
    prefix = tmp_path / "prefix"
    prefix.mkdir(mode=0o777)
    (prefix / "planted").write_text("x")
    os.chown(prefix, OTHER_UID, OTHER_UID)
    with pytest.raises(PrefixError, match=rf"belongs to uid {OTHER_UID}, not to"):
        _prepare(prefix, clean=True)
    assert (prefix / "planted").exists(), "--clean must not act on another user's directory"


@needs_root
def test_prepare_prefix_refuses_a_parent_owned_by_another_user(tmp_path):
    parent = tmp_path / "squatted"
    parent.mkdir(mode=0o755)
    os.chown(parent, OTHER_UID, OTHER_UID)
    with pytest.raises(PrefixError, match=rf"inside {parent}, which belongs to uid {OTHER_UID}"):
        _prepare(parent / "node")
    assert not (parent / "node").exists()


def test_prepare_prefix_refuses_a_parent_anyone_may_write(tmp_path):
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)
    with pytest.raises(PrefixError, match=r"anyone may write \(mode 0777, not sticky\)"):
        _prepare(parent / "node")
    parent.chmod(0o1777)  # sticky, like /tmp: others cannot rename what they do not own
    _prepare(parent / "node")


def test_default_prefix_is_per_user():
    from dispy_node.config import default_dest_path_prefix

    head, node = os.path.split(default_dest_path_prefix())
    assert node == "node"
    assert os.path.basename(head).startswith("dispy-")
    assert os.path.basename(head) != "dispy-"

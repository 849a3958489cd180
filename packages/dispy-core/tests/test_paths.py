"""Every file name from the wire stays inside its directory (dispy_core.paths.safe_join)."""

from __future__ import annotations

import os

import pytest

from dispy_core.paths import Refusal, UnsafePathError, safe_join


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    ("relative", "parts"),
    [
        ("f", ["f"]),
        ("a/b/f", ["a", "b", "f"]),
        ("./a//f", ["a", "f"]),
        ("a\\f", ["a", "f"]),
        ("a/", ["a"]),
        ("..f", ["..f"]),
        ("f..", ["f.."]),
    ],
)
def test_names_inside_are_joined(base, relative, parts):
    assert safe_join(str(base), relative) == os.path.join(str(base), *parts)


def test_base_need_not_exist(tmp_path):
    assert safe_join(str(tmp_path / "later"), "f") == str(tmp_path / "later" / "f")


@pytest.mark.parametrize(
    ("relative", "refusal", "words"),
    [
        ("/etc/passwd", Refusal.ABSOLUTE, "must be relative: absolute paths are not accepted"),
        ("\\evil", Refusal.ABSOLUTE, "must be relative"),
        ("//server/share", Refusal.ABSOLUTE, "must be relative"),
        ("a\0b", Refusal.NUL, "NUL"),
        ("", Refusal.EMPTY, "names no file"),
        (".", Refusal.EMPTY, "names no file"),
        ("./", Refusal.EMPTY, "must stay inside its directory"),
        ("..", Refusal.DOT_DOT, "may not contain '..'"),
        ("a/../../x", Refusal.DOT_DOT, "must stay inside its directory"),
        ("a\\..\\x", Refusal.DOT_DOT, "may not contain '..'"),
        ("sub/../sub/x", Refusal.DOT_DOT, "may not contain '..'"),
    ],
)
def test_unsafe_names_are_refused_saying_why(base, relative, refusal, words):
    with pytest.raises(UnsafePathError, match=words) as caught:
        safe_join(str(base), relative)
    assert caught.value.refusal is refusal
    assert caught.value.path == relative
    assert repr(relative) in str(caught.value)


def test_refusal_names_the_directory_as_the_caller_calls_it(base):
    with pytest.raises(UnsafePathError, match="must stay inside the client's directory"):
        safe_join(str(base), "../x", "the client's directory")


def test_link_leading_outside_is_refused(base, tmp_path):
    (tmp_path / "outside").mkdir()
    (base / "link").symlink_to(tmp_path / "outside")
    for name in ("link", "link/x"):
        with pytest.raises(UnsafePathError, match="leads outside its directory") as caught:
            safe_join(str(base), name)
        assert caught.value.refusal is Refusal.OUTSIDE


def test_link_to_a_sibling_sharing_the_bases_name_is_refused(base, tmp_path):
    (tmp_path / "base-evil").mkdir()
    (base / "link").symlink_to(tmp_path / "base-evil")
    with pytest.raises(UnsafePathError, match="leads outside"):
        safe_join(str(base), "link/x")


def test_link_to_the_base_itself_is_refused(base):
    (base / "here").symlink_to(base)
    with pytest.raises(UnsafePathError, match="itself") as caught:
        safe_join(str(base), "here")
    assert caught.value.refusal is Refusal.BASE
    # below it is fine: the name still lands inside
    assert safe_join(str(base), "here/f") == os.path.join(str(base), "here", "f")


def test_link_that_stays_inside_is_allowed(base):
    (base / "real").mkdir()
    (base / "alias").symlink_to(base / "real")
    assert safe_join(str(base), "alias/x") == os.path.join(str(base), "alias", "x")


def test_base_reached_through_a_link_still_works(tmp_path, base):
    (tmp_path / "via").symlink_to(base)
    assert safe_join(str(tmp_path / "via"), "f") == os.path.join(str(tmp_path / "via"), "f")


def test_unsafe_path_error_is_a_value_error():
    assert issubclass(UnsafePathError, ValueError)

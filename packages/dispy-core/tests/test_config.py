"""Shared defaults and size parsing (dispy_core.config)."""

from __future__ import annotations

import pytest

from dispy_core import config


def test_default_ports_match_the_reference():
    assert (config.CLIENT_PORT, config.NODE_PORT, config.SCHEDULER_PORT) == (51347, 51348, 51349)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("512k", 512 * 1024),
        ("10m", 10 * 1024 * 1024),
        ("2g", 2 * 1024**3),
        ("1t", 1024**4),
        ("10M", 10 * 1024 * 1024),
        ("10mb", 10 * 1024 * 1024),
        ("10 MB", 10 * 1024 * 1024),
        (" 7 ", 7),
        ("1.5k", 1536),
        ("0m", 0),
        (0, 0),
        (4096, 4096),
    ],
)
def test_parse_size_accepts_documented_forms(text, expected):
    assert config.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "10x", "-1", "-5m", "m", "1.2.3", "10 m b", "1e3"])
def test_parse_size_refuses_invalid_text_with_a_clear_message(text):
    with pytest.raises(ValueError, match=r"invalid size .*suffix k, m, g or t \(e\.g\. 10m\)"):
        config.parse_size(text)


def test_parse_size_refuses_negative_integer():
    with pytest.raises(ValueError, match="size must be >= 0, not -1"):
        config.parse_size(-1)


def test_parse_size_names_the_bad_text():
    with pytest.raises(ValueError, match="'12q'"):
        config.parse_size("12q")

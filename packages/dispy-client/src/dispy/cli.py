"""``dispy``: small tools for users of dispy clusters."""

from __future__ import annotations

import sys

from dispy import __version__


def main() -> None:
    args = sys.argv[1:]
    if args in (["--version"], ["-V"]):
        print(f"dispy {__version__}")
        return
    print("usage: dispy --version", file=sys.stderr)
    sys.exit(2)

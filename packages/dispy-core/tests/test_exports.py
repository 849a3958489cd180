"""dispy_core's public names, and the role packages keeping off its private ones."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import dispy_core

PACKAGES = Path(__file__).resolve().parents[2]
ROLES = ["dispy-client", "dispy-node", "dispy-scheduler", "dispy-relay"]


def test_all_is_importable_and_sorted():
    assert dispy_core.__all__ == sorted(dispy_core.__all__)
    assert len(set(dispy_core.__all__)) == len(dispy_core.__all__)
    for name in dispy_core.__all__:
        value = getattr(dispy_core, name)
        # The same object as in the module that defines it (no copy, no shadowing).
        module = importlib.import_module(dispy_core._WHERE[name])
        assert getattr(module, name) is value, name


def test_all_matches_the_names_loaded_on_use():
    assert set(dispy_core.__all__) == set(dispy_core._WHERE)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        dispy_core.no_such_name  # noqa: B018


def test_submodules_still_import_as_before():
    from dispy_core import availability, netinfo, serialize

    assert availability.__name__ == "dispy_core.availability"
    assert netinfo.__name__ == "dispy_core.netinfo"
    assert serialize.__name__ == "dispy_core.serialize"


def test_import_stays_light():
    # A CLI importing dispy_core (for its config) must not load pydantic and asyncio too.
    code = "import sys, dispy_core.config; print('pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _private_core_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] != "dispy_core":
                continue
            if any(part.startswith("_") for part in parts):
                found.append(f"{path.name}:{node.lineno}: module {node.module}")
            found += [
                f"{path.name}:{node.lineno}: {node.module}.{alias.name}"
                for alias in node.names
                if alias.name.startswith("_")
            ]
        elif isinstance(node, ast.Import):
            found += [
                f"{path.name}:{node.lineno}: module {alias.name}"
                for alias in node.names
                if alias.name.startswith("dispy_core.")
                and any(part.startswith("_") for part in alias.name.split("."))
            ]
    return found


@pytest.mark.parametrize("package", ROLES)
def test_roles_import_no_private_name_of_core(package: str):
    sources = sorted((PACKAGES / package / "src").rglob("*.py"))
    assert sources, f"no sources found for {package}"
    found = [hit for path in sources for hit in _private_core_imports(path)]
    assert found == []


def test_private_import_is_detected(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from dispy_core.protocol.messages import _Message, Notice\n"
        "from dispy_core.testing._ports import free_port\n"
        "import dispy_core._hidden\n"
    )
    assert len(_private_core_imports(sample)) == 3

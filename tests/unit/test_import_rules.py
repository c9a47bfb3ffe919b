"""Imports point one way (DESIGN.md §4), and neither the gateway nor a consumer's own process loads
TensorFlow (models run in engine processes)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"schemas", "engine", "store", "broker", "gateway", "consumers", "percept", "tests", "bench"}
ALLOWED = {
    "schemas": set(),
    "engine": {"schemas"},
    "store": {"schemas"},
    "broker": {"schemas"},
    "gateway": {"schemas", "store", "broker"},
    "consumers": {"schemas", "engine", "store", "broker"},
    "percept": OURS - {"tests", "bench"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_design_allows(package: str) -> None:
    for path in sorted((ROOT / package).rglob("*.py")):
        forbidden = _imported_packages(path) - ALLOWED[package] - {package}
        assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


@pytest.mark.parametrize(
    "modules",
    ["gateway.app, percept.compose, broker.memory, store.sqlite", "consumers.service, percept.cli"],
    ids=["gateway", "consumer"],
)
def test_tensorflow_stays_out_of_the_gateway_and_the_consumer_process(modules: str) -> None:
    code = (
        f"import sys, {modules}; "
        "loaded = [m for m in ('tensorflow', 'keras', 'engine.model') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_the_fork_server_preloads_the_modules_of_its_childrens_entry_points() -> None:
    """A child imports the module of its target to unpickle it: one the fork server has not imported costs
    every engine start the import (45 of the 190 ms of CPU a replacement engine took to start)."""
    from consumers import engines, forkserver, sandbox

    assert {engines._serve.__module__, sandbox._child.__module__} <= set(forkserver._PRELOAD)


def test_the_command_module_imports_little_as_every_engine_process_imports_it_again() -> None:
    """multiprocessing runs the parent's main module (`percept.cli`, or the console script importing it) again
    in each child it starts: the settings' import there cost each engine start 25 ms of CPU."""
    heavy = ("percept.settings", "pydantic_settings", "consumers", "gateway")
    code = (
        "import sys, percept.cli; "
        f"loaded = [m for m in {heavy} if m in sys.modules]; assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr

"""The shape of the deployable package: no import cycles, no module over 700 lines, and each
function's process loading only what that function needs (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "functions" / "wholeimage"
MAX_MODULE_LINES = 700


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module: the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in edges.get(module, ()):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return cycles


def test_the_cycle_finder_finds_a_cycle_it_is_shown() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

    assert strongly_connected(edges) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycle() -> None:
    graph = grimp.build_graph("wholeimage", exclude_type_checking_imports=True)
    edges = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}

    assert strongly_connected(edges) == []


def test_no_module_of_the_package_is_over_700_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text("utf-8").splitlines())) > MAX_MODULE_LINES
    }

    assert long == {}


# What a process serving one function may not load: the other functions' machinery.
# (settings reads three standard-library-only channel rules: wholeimage.channels.formats, .urls
# and .sinks; every service module, and all that renders or sends, is under channels.base.)
NOT_LOADED = {
    "create": [
        "wholeimage.channels.base",
        "wholeimage.channels.registry",
        "wholeimage.channels.text",
        "wholeimage.notify",
        "wholeimage.check",
        "wholeimage.ims.poller",
        "wholeimage.cli",
        "psycopg",
        "h11",
    ],
    "check": [
        "wholeimage.cli",
        "wholeimage.create",
        "wholeimage.validation",
        "jsonschema",
        "psycopg",
    ],
    "notify": [
        "wholeimage.cli",
        "wholeimage.check",
        "wholeimage.create",
        "wholeimage.ims",
        "psycopg",
        "h11",
    ],
}
# PyJWT and cryptography (about 100 ms) wait for the first ID token to check (wholeimage.callers).
for _modules in NOT_LOADED.values():
    _modules += ["jwt", "cryptography"]


def loaded_by(target: str) -> list[str]:
    """The modules a fresh interpreter holds once it imported main.py and ``target``'s edge."""
    probe = (
        "import json, sys, main\n"
        f"from wholeimage.web.{target} import handle_{target}\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "functions"),
        "WHOLEIMAGE_API_TOKEN": "x" * 16,  # no start-up warning on stdout
    }
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT / "functions",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return list(json.loads(done.stdout))


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(NOT_LOADED))
def test_a_function_process_loads_only_its_own_modules(target: str) -> None:
    loaded = loaded_by(target)

    assert f"wholeimage.web.{target}" in loaded  # the probe saw the target's own edge
    assert [
        module
        for module in loaded
        if any(module == name or module.startswith(f"{name}.") for name in NOT_LOADED[target])
    ] == []


@pytest.mark.slow
def test_of_the_channels_create_loads_only_the_standard_library_rules_settings_reads() -> None:
    channels = {
        module for module in loaded_by("create") if module.startswith("wholeimage.channels")
    }

    assert channels <= {
        "wholeimage.channels",
        "wholeimage.channels.formats",
        "wholeimage.channels.urls",
        "wholeimage.channels.sinks",
    }

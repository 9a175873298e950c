"""The architecture holds (ARCHITECTURE.md): imports point one way between the floors of
`.importlinter`, no module takes part in an import circle, and the contract really refuses an
upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("keras_metamae", "pipeline", "preprocessing", "commandline")


def _lint_imports(cwd: str) -> subprocess.CompletedProcess:
    # The venv's own console script, with the checked tree first on the import path.
    script = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    env = dict(os.environ, PYTHONPATH=cwd)
    return subprocess.run([script, "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_import_contracts_are_kept():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The same contracts on a copy of the tree where the networks import the training loop."""
    for name in PACKAGES:
        shutil.copytree(os.path.join(REPO, name), tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, ".importlinter"), tmp_path / ".importlinter")
    layers = tmp_path / "keras_metamae" / "models" / "layers.py"
    layers.write_text(layers.read_text() + "\n\ndef _upward():\n"
                      "    from keras_metamae.training import run  # noqa: F401\n")
    result = _lint_imports(str(tmp_path))
    assert result.returncode != 0
    assert "keras_metamae.models.layers -> keras_metamae.training.run" in result.stdout
    assert "1 kept, 1 broken" in result.stdout


def _strongly_connected_components(graph, modules):
    """Tarjan's algorithm over `graph`'s direct imports: the groups of modules that import each
    other, directly or through others."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            groups.append(sorted(group))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return groups


def test_no_module_is_part_of_an_import_circle(monkeypatch):
    grimp = pytest.importorskip("grimp")  # installed with import-linter
    monkeypatch.syspath_prepend(REPO)
    graph = grimp.build_graph(*PACKAGES)
    circles = [group for group in _strongly_connected_components(graph, graph.modules)
               if len(group) > 1]
    assert circles == []


def test_the_circle_finder_finds_circles():
    class Graph:
        imports = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, module):
            return self.imports.get(module, set())

    groups = _strongly_connected_components(Graph(), ["a", "b", "c", "d"])
    assert ["a", "b", "c"] in groups and ["d"] in groups

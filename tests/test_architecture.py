"""The architecture of ../shared/DESIGN.md, enforced: the import-linter contracts of pyproject.toml hold, a
planted forbidden import breaks them, and the package has no import cycle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """Run import-linter with the pyproject.toml of cwd over the silc_eval package found in cwd."""
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()"], cwd=cwd, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "6 kept" in result.stdout


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory):
    """A copy of the package and its pyproject.toml, to plant imports in."""
    root = tmp_path_factory.mktemp("planted")
    shutil.copytree(ROOT / "silc_eval", root / "silc_eval", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize("module, planted, contract", [
    ("tasks/retrieval.py", "from silc_eval.data import readers", "Tasks and their machinery receive their data"),
    ("evaluate/api.py", "from silc_eval.train import loop", "The evaluate flow never imports the train flow"),
    ("tasks/linear_segmentation.py", "from silc_eval.tasks import zeroshot_segmentation",
     "A task never imports another task"),
    ("core/io.py", "from silc_eval.models import zoo", "Layers"),
    ("report/tables.py", "from silc_eval.machinery import probes", "The report reads records"),
])
def test_a_planted_forbidden_import_breaks_its_contract(package_copy, module, planted, contract):
    path = package_copy / "silc_eval" / module
    original = path.read_text()
    path.write_text(original.replace("from __future__ import annotations\n",
                                     f"from __future__ import annotations\n\n{planted}  # planted\n", 1))
    try:
        result = lint_imports(package_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken) or contract in result.stdout.split("Broken contracts")[-1], \
        result.stdout[-3000:]
    assert module.replace("/", ".").removesuffix(".py") in result.stdout


def strongly_connected(graph, modules) -> list[set[str]]:
    """Return the import cycles among modules: strongly connected components with more than one module."""
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.find_modules_directly_imported_by(node):
            if target not in modules:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(modules):
        if module not in index:
            visit(module)
    return components


def import_cycles() -> list[set[str]]:
    """Return the import cycles of the silc_eval package found first on sys.path (function-level imports too)."""
    graph = grimp.build_graph("silc_eval")
    modules = {m for m in graph.modules if m.startswith("silc_eval.")}
    assert len(modules) > 60
    return strongly_connected(graph, modules)


def test_the_package_has_no_import_cycle():
    assert import_cycles() == []


def test_a_planted_cycle_is_found(package_copy):
    path = package_copy / "silc_eval" / "core" / "errors.py"
    original = path.read_text()
    path.write_text(original + "\nfrom silc_eval.core import params  # planted: params imports errors\n")
    try:
        script = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
                  "from test_architecture import import_cycles; print(sorted(map(sorted, import_cycles())))")
        result = subprocess.run([sys.executable, "-c", script], cwd=package_copy,
                                env={"PYTHONPATH": str(package_copy), "PATH": "/usr/bin:/bin"},
                                capture_output=True, text=True, timeout=300)
    finally:
        path.write_text(original)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[['silc_eval.core.errors', 'silc_eval.core.params']]" in result.stdout

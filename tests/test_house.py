"""The house: packages by stage, imports one way, no cycles, imports at the top of modules, and commands
that answer at once (ARCHITECTURE.md: "The house")."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("layout", "models", "render")
COMMANDS = {"layout/run.py"}  # the one module whose imports may wait inside functions (its docstring says why)
LINT = Path(sys.executable).parent / "lint-imports"


def project_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)})


def test_every_import_contract_in_pyproject_is_kept():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout


def test_the_contracts_catch_a_model_that_imports_the_pipeline(tmp_path):
    """The contracts are live: the same tree with one upward import breaks them."""
    for name in (*PACKAGES, "pyproject.toml"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, tmp_path / name, **({"ignore": shutil.ignore_patterns("_native")}
                                               if name == "layout" else {}))
    mlp = tmp_path / "models" / "network" / "mlp.py"
    mlp.write_text(mlp.read_text() + "\nfrom layout.pipeline import train_stage  # noqa: E402\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "models import nothing above the core BROKEN" in result.stdout
    assert "models.network.mlp -> layout.pipeline.train_stage" in result.stdout


def import_cycles() -> list[list[str]]:
    """The strongly connected components of more than one module in the graph of the project's imports,
    counting imports inside functions and under TYPE_CHECKING (Tarjan's algorithm)."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    modules = {m for m in graph.modules if m.split(".")[0] in PACKAGES}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v) & modules:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_one_that_imports_it_back():
    assert import_cycles() == []


def test_imports_sit_at_the_top_of_modules_but_in_the_commands():
    inside = []
    for path in project_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for child in ast.walk(node):
                    if isinstance(child, (ast.Import, ast.ImportFrom)):
                        inside.append(f"{path.relative_to(REPO)}:{child.lineno}")
    assert [place for place in inside if place.split(":")[0] not in COMMANDS] == []


@pytest.mark.parametrize("package", ["layout.core", "layout.engine", "layout.insight", "layout.pipeline", "models",
                                     "models.data", "models.network", "render"])
def test_each_package_says_its_job_and_what_it_may_import(package):
    init = REPO / package.replace(".", "/") / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert len(doc.split()) >= 15, f"{init} needs a docstring: its one job, and what it may import"


@pytest.mark.parametrize("args", [["--help"], ["configs/euclid.yaml", "--set", "train.learnig_rate=0.1"]])
def test_help_and_a_config_error_load_no_heavy_library(args):
    """--help and a config mistake answer before JAX, optax, scipy, matplotlib or VTK are imported (the
    stages load them once the config is valid; benchmarks/README.md has the timings)."""
    probe = ("import sys, runpy\n"
             f"sys.argv = ['layout.run'] + {args!r}\n"
             "try:\n"
             "    runpy.run_module('layout.run', run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "heavy = sorted(m for m in ('jax', 'optax', 'scipy', 'matplotlib', 'pyvista', 'vtkmodules', 'pooch')"
             " if m in sys.modules)\n"
             "print('HEAVY', heavy, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in result.stderr, result.stderr

"""The report depends on the run directory only: nothing in ``endd.report`` imports the pipeline."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import endd.report
from endd.methods import METHODS
from endd.report.tables import title

REPORT = Path(endd.report.__file__).parent


def _imported_modules(source: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def test_no_report_module_imports_the_pipeline():
    files = sorted(REPORT.glob("*.py"))
    assert {p.name for p in files} >= {"__init__.py", "figures.py", "tables.py"}
    for path in files:
        imported = _imported_modules(path.read_text(encoding="utf-8"))
        offending = [m for m in imported if m.split(".")[:2] == ["endd", "pipeline"]]
        assert not offending, f"{path.name} imports {offending}"


def test_importing_the_report_loads_no_pipeline_module():
    code = (
        "import sys\n"
        "import endd.report, endd.store.evaluation, endd.report.figures, endd.report.tables\n"
        "loaded = [m for m in sys.modules if m.split('.')[:2] == ['endd', 'pipeline']]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_titles_come_from_the_methods_registry():
    assert title("individual") == "Individual" and title("ensemble") == "Ensemble"
    for name, method in METHODS.items():
        assert title(name) == method.title
    assert title("endd_aux") == "EnD²+AUX"
    assert title("not_a_method") == "not_a_method"

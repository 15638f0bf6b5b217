"""The package layering the project promises: each package imports only those below it
(jepa < pipelines < serve < cluster), the model knows nothing of Ray, and no library code moves
MLflow's process-global URIs (the store is always passed explicitly)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORDER = ["jepa", "pipelines", "serve", "cluster"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", ORDER)
def test_each_package_imports_only_the_ones_below_it(package):
    allowed = set(ORDER[: ORDER.index(package) + 1])
    bad = {}
    for f in sorted((REPO / package).rglob("*.py")):
        wrong = (_imports(f) & set(ORDER)) - allowed
        if wrong:
            bad[str(f.relative_to(REPO))] = sorted(wrong)
    assert not bad, f"{package} may import only {sorted(allowed)}: {bad}"


def test_the_model_knows_nothing_of_ray():
    users = [str(f) for f in (REPO / "jepa").rglob("*.py") if "ray" in _imports(f)]
    assert not users


def test_no_library_code_sets_mlflow_global_uris():
    hits = []
    for package in ORDER:
        for f in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Attribute) and node.attr in (
                    "set_tracking_uri",
                    "set_registry_uri",
                ):
                    hits.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert not hits, hits

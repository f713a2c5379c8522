"""The packages form layers without back edges: modules/ (bottom) <- components/ <- pipeline/ <- kubeflow/.

Read from the source (every import statement, also those inside functions), so no package is imported here.
"""
import ast
import os
from typing import Iterator, Tuple

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("modules", "components", "pipeline", "kubeflow")  # each may import only the packages before it


def imported_packages(path: str) -> Iterator[Tuple[int, str]]:
    """(line, top-level package) of every absolute import in one Python file."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def python_files(package: str) -> Iterator[str]:
    for directory, _, files in os.walk(os.path.join(REPO_ROOT, package)):
        yield from (os.path.join(directory, name) for name in sorted(files) if name.endswith(".py"))


@pytest.mark.parametrize("package", LAYERS[:-1])
def test_no_package_imports_a_layer_above_it(package):
    above = set(LAYERS[LAYERS.index(package) + 1:])
    files = list(python_files(package))
    assert files, f"no Python files under {package}/"
    back_edges = [f"{os.path.relpath(path, REPO_ROOT)}:{line} imports {name}"
                  for path in files for line, name in imported_packages(path) if name in above]
    assert not back_edges, f"{package}/ must not import {sorted(above)}:\n" + "\n".join(back_edges)


def test_the_scan_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "example.py"
    source.write_text("import os\n\ndef f():\n    from pipeline.configs import PIPELINE_NAME\n"
                      "    import kubeflow.runner\n")
    assert list(imported_packages(str(source))) == [(1, "os"), (4, "pipeline"), (5, "kubeflow")]

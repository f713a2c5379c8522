"""The packages form layers without back edges: modules/ (bottom) <- components/ <- pipeline/ <- kubeflow/; and
no module of theirs imports itself through others (an import cycle).

Read from the source (every import statement, also those inside functions), so no package is imported here.
"""
import ast
import collections
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("modules", "components", "pipeline", "kubeflow")  # each may import only the packages before it


def imports(path: str) -> Iterator[Tuple[int, str, Tuple[str, ...]]]:
    """(line, module, names) of every absolute import in one Python file: `import a.b` gives ("a.b", ()),
    `from a.b import c, d` gives ("a.b", ("c", "d"))."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, tuple(alias.name for alias in node.names)


def imported_packages(path: str) -> Iterator[Tuple[int, str]]:
    """(line, top-level package) of every absolute import in one Python file."""
    return ((line, module.split(".")[0]) for line, module, _ in imports(path))


def python_files(package: str, root: str = REPO_ROOT) -> Iterator[str]:
    for directory, _, files in os.walk(os.path.join(root, package)):
        yield from (os.path.join(directory, name) for name in sorted(files) if name.endswith(".py"))


def module_name(path: str, root: str) -> str:
    """"modules.trainer" for <root>/modules/trainer.py, "components.glue_example_gen" for its __init__.py."""
    parts = os.path.splitext(os.path.relpath(path, root))[0].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: str, packages: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """module -> {project module it imports: "path:line" of the first such import}, over the packages' files.

    `from a import b` imports the module a.b if there is one, else the module a. The parent packages an import
    runs first are no edges: components/glue_example_gen/component.py importing its sibling executor.py would
    otherwise close a cycle through the package's __init__.py, which imports component.py (the usual pattern).
    """
    files = {module_name(path, root): path for package in packages for path in python_files(package, root)}
    graph: Dict[str, Dict[str, str]] = {}
    for name, path in files.items():
        edges = graph.setdefault(name, {})
        for line, module, names in imports(path):
            targets = [f"{module}.{n}" if f"{module}.{n}" in files else module for n in names] or [module]
            for target in targets:
                if target in files and target != name:
                    edges.setdefault(target, f"{os.path.relpath(path, root)}:{line}")
    return graph


def shortest_cycle(graph: Dict[str, Dict[str, str]], start: str) -> Optional[List[str]]:
    """The shortest path of imports from `start` back to itself, [start, ..., start], or None."""
    paths = {start: [start]}
    queue = collections.deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph[node]):
            if target == start:
                return paths[node] + [start]
            if target not in paths:
                paths[target] = paths[node] + [target]
                queue.append(target)
    return None


def import_cycles(graph: Dict[str, Dict[str, str]]) -> List[List[str]]:
    """A shortest cycle through each module on one; cycles through the same modules are listed once."""
    cycles: Dict[frozenset, List[str]] = {}
    for start in sorted(graph):
        cycle = shortest_cycle(graph, start)
        if cycle:
            cycles.setdefault(frozenset(cycle), cycle)
    return list(cycles.values())


def describe(cycle: List[str], graph: Dict[str, Dict[str, str]]) -> str:
    """"a -> b (a.py:3) -> a (b.py:7)": each step with the import that makes it."""
    return cycle[0] + "".join(f" -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


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


def test_no_import_cycle_among_the_project_modules():
    graph = import_graph(REPO_ROOT, LAYERS)
    assert any(graph.values()), "the scan found no imports between the project's modules"
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(cycle, graph) for cycle in cycles)


def test_the_cycle_check_sees_a_cycle_through_an_import_inside_a_function(tmp_path):
    package = tmp_path / "modules"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import os\n\nfrom modules.b import g\n")
    (package / "b.py").write_text("def g():\n    from modules import a\n")
    (package / "c.py").write_text("import modules.a\n")  # imports the cycle, is not on it
    graph = import_graph(str(tmp_path), ("modules",))
    cycles = import_cycles(graph)
    assert cycles == [["modules.a", "modules.b", "modules.a"]]
    assert describe(cycles[0], graph) == "modules.a -> modules.b (modules/a.py:3) -> modules.a (modules/b.py:2)"

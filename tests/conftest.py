"""Shared test set-up: Keras 2 for transformers, quiet TensorFlow, where the real GLUE data lives, the one tiny
MRPC pipeline run the end-to-end modules share, and its Kubeflow spec (with the Tuner) executed once."""
import os
import types

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLUE_DIR = os.environ.get("GLUE_DIR", os.path.join(REPO_ROOT, "..", "shared", "glue"))


def glue_dir_or_skip(task_directory: str) -> str:
    """The real GLUE data directory for one task (e.g. "MRPC"), or skip the test saying why."""
    path = os.path.join(GLUE_DIR, task_directory)
    if not os.path.isdir(path):
        pytest.skip(f"real GLUE data not found at {path} (set GLUE_DIR to a directory in the standard GLUE layout)")
    return GLUE_DIR


# The modules that read the session's shared pipeline runs (the fixtures below). pytest.ini runs the suite on two
# pytest-xdist workers; these modules run on one of them, so each shared run is made once per session.
SHARED_RUNS = {"tiny_mrpc_run", "tiny_kubeflow_run"}
SHARED_RUN_MODULES = {"tests/test_kubeflow_execution.py", "tests/test_pipeline_e2e.py", "tests/test_reliability.py"}


def pytest_xdist_make_scheduler(config: pytest.Config, log) -> "xdist.scheduler.LoadScopeScheduling":
    """Whole modules to a worker (module-scoped fixtures are made once), SHARED_RUN_MODULES together; the largest
    group starts first. (xdist's own `--dist loadgroup` marks do not reach its scheduler under pytest 9.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndSharedRuns(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "shared pipeline runs" if module in SHARED_RUN_MODULES else module

    return ModulesAndSharedRuns(config, log)


def pytest_collection_modifyitems(items: list) -> None:
    """A test that reads a shared run from a module not in SHARED_RUN_MODULES would make that run a second time on
    the other worker: stop at collection and say what to add."""
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if SHARED_RUNS & set(item.fixturenames) and module not in SHARED_RUN_MODULES:
            raise pytest.UsageError(f"{item.nodeid} reads a shared pipeline run: add {module!r} to "
                                    "SHARED_RUN_MODULES in tests/conftest.py")


def ancestors(pipeline, node_id: str) -> set:
    """The ids of every node upstream of node_id in a TFX pipeline, transitively."""
    nodes = {component.id: component for component in pipeline.components}
    found, todo = set(), [node_id]
    while todo:
        for upstream in nodes[todo.pop()].upstream_nodes:
            if upstream.id not in found:
                found.add(upstream.id)
                todo.append(upstream.id)
    return found


@pytest.fixture(scope="session")
def tiny_mrpc_run(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """The local pipeline run of tests/tiny_mrpc.py, made once per session: read it, never change it."""
    from tiny_mrpc import first_run

    return first_run(str(tmp_path_factory.mktemp("tiny_mrpc")))


@pytest.fixture(scope="session")
def tiny_kubeflow_run(tmp_path_factory: pytest.TempPathFactory,
                      tiny_mrpc_run: types.SimpleNamespace) -> types.SimpleNamespace:
    """tests/tiny_kubeflow.py's executed spec, made once per session: read it, never change it."""
    from tiny_kubeflow import executed_tuned_spec

    return executed_tuned_spec(str(tmp_path_factory.mktemp("tiny_kubeflow")), tiny_mrpc_run)

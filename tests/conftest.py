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

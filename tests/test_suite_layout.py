"""The suite's own set-up (tests/conftest.py): a test outside SHARED_RUN_MODULES that reads a shared pipeline run
is refused at collection, since on the other pytest-xdist worker it would make that run a second time."""
import types

import pytest

import conftest


def item(nodeid: str, *fixtures: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(nodeid=nodeid, fixturenames=["tmp_path", *fixtures])


def test_shared_runs_are_read_only_from_the_modules_that_share_a_worker() -> None:
    conftest.pytest_collection_modifyitems([item("tests/test_kubeflow_execution.py::test_a", "tiny_kubeflow_run"),
                                            item("tests/test_trainer.py::test_b")])
    with pytest.raises(pytest.UsageError, match="add 'tests/test_trainer.py' to SHARED_RUN_MODULES"):
        conftest.pytest_collection_modifyitems([item("tests/test_trainer.py::test_c", "tiny_mrpc_run")])

"""GlueExampleGen: a FileBasedExampleGen that turns one task's data files (GLUE or a task spec's) into a TFX Examples artifact."""
from __future__ import annotations

import os
from typing import Dict, List, Tuple, Union

import tensorflow as tf
from absl import logging
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from components.glue_example_gen import executor
from modules.glue import GlueTask, get_task


def is_remote(path: str) -> bool:
    """gs://, s3://, hdfs://...: storage the orchestrator's pods read, often unreachable where the pipeline is compiled."""
    return "://" in path


def input_locations(data_dir: str, task: GlueTask) -> Tuple[str, Dict[str, str]]:
    """ExampleGen's input_base and each split's pattern under it: <data_dir> and <directory>/<file> for GLUE;
    for a task whose files lie elsewhere (absolute paths, URIs), the deepest folder holding them all."""
    paths = {split: task.split_path(split, data_dir) for split in task.splits}
    base = data_dir.rstrip("/")
    if not all(path.startswith(base + "/") for path in paths.values()):
        common: List[str] = []
        for parts in zip(*(path.split("/")[:-1] for path in paths.values())):
            if len(set(parts)) > 1:
                break
            common.append(parts[0])
        if not common:
            raise ValueError(f"The files of task {task.name} ({', '.join(paths.values())}) must all be local "
                             "or all on one file system.")
        base = "/".join(common)
        if base == "" or base.endswith(":/"):  # the local root "/", or "gs://" when only the scheme is shared
            base += "/"
    return base, {split: path[len(base):].lstrip("/") for split, path in paths.items()}


def glue_input_config(data_dir: str, task: GlueTask) -> example_gen_pb2.Input:
    """One input split per file of the task, checked now so a wrong path fails at pipeline build time.

    Labeled splits (train, eval*) are required: a missing file is an error naming the path expected.
    Test splits are optional (many users have no test file); a missing one is left out and logged.
    Remote files (e.g. gs:// for Kubeflow) are not read now: every split is declared; at run time the
    executor names a missing labeled file, and a missing test file gives an empty split (no predictions).
    """
    base, patterns = input_locations(data_dir, task)
    if is_remote(base):
        return example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name=split, pattern=pattern) for split, pattern in patterns.items()
        ])
    if task.directory:
        if not tf.io.gfile.isdir(data_dir):
            raise ValueError(f"GLUE data directory not found: {data_dir}.")
        task_dir = os.path.join(data_dir, task.directory)
        if not tf.io.gfile.isdir(task_dir):
            raise ValueError(
                f"GLUE task directory not found: {task_dir} (expected the standard GLUE layout "
                f"<data_dir>/{task.directory}/; get it with "
                f"`python -m components.glue_example_gen.download --task {task.name} --data_dir {data_dir}`)."
            )
    splits = []
    for split, pattern in patterns.items():
        path = task.split_path(split, data_dir)
        if tf.io.gfile.exists(path):
            splits.append(example_gen_pb2.Input.Split(name=split, pattern=pattern))
        elif executor.is_labeled(task, split):
            raise ValueError(f"Task {task.name} split {split!r} needs the file {path}, which does not exist.")
        else:
            logging.info("Task %s: no %s, so no %r split.", task.name, path, split)
    return example_gen_pb2.Input(splits=splits)


class GlueExampleGen(FileBasedExampleGen):
    """Ingests one task's files: a GLUE task from <data_dir>/<task directory>/ in the standard GLUE layout, or
    a task spec's files.

    Output `examples`: gzipped TFRecords of tf.train.Example in the schema of modules/glue.py, one
    artifact split per file of the task (train, eval, MNLI's eval_mismatched, and test splits
    whose file exists). Rows are never re-split or hashed: the task's own eval file is the eval split.
    The task description travels to the executor as JSON in custom_config.
    """

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, data_dir: str, task: Union[str, GlueTask]):
        glue_task = get_task(task) if isinstance(task, str) else task
        input_config = glue_input_config(data_dir, glue_task)
        super().__init__(
            input_base=input_locations(data_dir, glue_task)[0],
            input_config=input_config,
            output_config=example_gen_pb2.Output(),
            custom_config=executor.make_custom_config(glue_task),
        )
        # The test splits it reads (those whose file exists, or every one for remote data): what BulkInferrer predicts.
        self.test_splits = [split.name for split in input_config.splits if not executor.is_labeled(glue_task, split.name)]

"""GlueExampleGen: a FileBasedExampleGen that turns one GLUE task's TSV files into a TFX Examples artifact."""
from __future__ import annotations

import os

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


def glue_input_config(data_dir: str, task: GlueTask) -> example_gen_pb2.Input:
    """One input split per file of the task table, checked now so a wrong path fails at pipeline build time.

    Labeled splits (train, eval*) are required: a missing file is an error naming the path expected.
    Test splits are optional (many users have no test file); a missing one is left out and logged.
    A remote data_dir (e.g. gs:// for Kubeflow) is not read now: its labeled splits are declared and the
    executor names any missing file at run time; test splits, which no later component uses, are left out.
    """
    if is_remote(data_dir):
        return example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name=split, pattern=f"{task.directory}/{file_name}")
            for split, file_name in task.splits.items() if executor.is_labeled(task, split)
        ])
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
    for split, file_name in task.splits.items():
        pattern = f"{task.directory}/{file_name}"
        path = os.path.join(data_dir, pattern)
        if tf.io.gfile.exists(path):
            splits.append(example_gen_pb2.Input.Split(name=split, pattern=pattern))
        elif executor.is_labeled(task, split):
            raise ValueError(f"GLUE {task.name} split {split!r} needs the file {path}, which does not exist.")
        else:
            logging.info("GLUE %s: no %s, so no %r split.", task.name, path, split)
    return example_gen_pb2.Input(splits=splits)


class GlueExampleGen(FileBasedExampleGen):
    """Ingests one GLUE task from <data_dir>/<task directory>/ in the standard GLUE layout.

    Output `examples`: gzipped TFRecords of tf.train.Example in the schema of modules/glue.py, one
    artifact split per file of the task table (train, eval, MNLI's eval_mismatched, and test splits
    whose file exists). Rows are never re-split or hashed: GLUE's own dev set is the eval split.
    """

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, data_dir: str, task: str):
        glue_task = get_task(task)
        super().__init__(
            input_base=data_dir,
            input_config=glue_input_config(data_dir, glue_task),
            output_config=example_gen_pb2.Output(),
            custom_config=executor.make_custom_config(glue_task),
        )

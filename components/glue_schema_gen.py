"""GlueSchemaGen: the expected data schema, written from the task description instead of inferred.

An inferred schema describes whatever data arrived, so ExampleValidator could never object to it. This
one states what the task promises: two non-empty string features, an integer label in
[0, num_labels) or a float score (in the task's score_range, if it has one: STS-B [0, 5]), and an
integer index, on every train and eval example. It also says how far the label distribution of an eval split
may be from train's (TFDV's skew comparator on the label), which TrainabilityGate applies.
"""

import os
from typing import Union

from tensorflow_data_validation.utils import schema_util
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx import v1 as tfx

from modules.glue import FEATURE_INDEX, FEATURE_LABEL, FEATURE_TEXT_A, FEATURE_TEXT_B, GlueTask, get_task

SCHEMA_FILE = "schema.pbtxt"


def glue_schema(task: Union[str, GlueTask]) -> schema_pb2.Schema:
    """The schema of one task's labeled examples (train and eval splits); a str names a GLUE task."""
    task = get_task(task) if isinstance(task, str) else task
    schema = schema_pb2.Schema()

    def add(name: str, kind: int) -> schema_pb2.Feature:
        feature = schema.feature.add(name=name, type=kind)
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        feature.shape.SetInParent()  # a scalar per example: FixedLenFeature([])
        return feature

    add(FEATURE_TEXT_A, schema_pb2.BYTES)
    add(FEATURE_TEXT_B, schema_pb2.BYTES)
    add(FEATURE_INDEX, schema_pb2.INT)
    if task.is_regression:
        label = add(FEATURE_LABEL, schema_pb2.FLOAT)
        if task.score_range is not None:
            label.float_domain.min, label.float_domain.max = task.score_range
    else:
        label = add(FEATURE_LABEL, schema_pb2.INT)
        label.int_domain.min, label.int_domain.max = 0, task.num_labels - 1
        label.int_domain.is_categorical = True
    return schema


def add_label_skew_comparator(schema: schema_pb2.Schema, task: GlueTask, max_label_skew: float) -> None:
    """Bounds the distance between the label distributions of train and an eval split: TFDV's L-infinity
    distance between class distributions, or Jensen-Shannon divergence between score histograms (regression).

    A skew comparator, because the eval split stands for the data the model will serve. ExampleValidator never
    applies it (it validates each split alone); TrainabilityGate compares train with each eval split.
    """
    label = schema_util.get_feature(schema, FEATURE_LABEL)
    if task.is_regression:
        label.skew_comparator.jensen_shannon_divergence.threshold = max_label_skew
    else:
        label.skew_comparator.infinity_norm.threshold = max_label_skew


@tfx.dsl.components.component
def GlueSchemaGen(task_spec: tfx.dsl.components.Parameter[str], max_label_skew: tfx.dsl.components.Parameter[float],
                  schema: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Schema]) -> None:
    """task_spec: the task description as JSON (GlueTask.to_json)."""
    task = GlueTask.from_json(task_spec)
    written = glue_schema(task)
    add_label_skew_comparator(written, task, max_label_skew)
    schema_util.write_schema_text(written, os.path.join(schema.uri, SCHEMA_FILE))
